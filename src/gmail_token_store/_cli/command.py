"""The `gmail-token-store` command: operator tooling on top of TokenStore.

Exit codes: 0 success; 1 an expected failure (bad DSN, unknown user, revoked grant, a
malformed file) or, for `list --needs-attention` and `refresh-all`, rows that need a
person; 2 a usage error. Expected failures print one line on stderr, never a traceback,
and no output ever carries a token, a refresh token, a client secret or a DSN password.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import GMAIL_SEND, TokenStoreError, __version__
from .._core.text import printable
from .common import (
    EXIT_FAILURE,
    PROG,
    Failure,
    Handler,
    positive_float,
    positive_int,
    say,
    user_id_arg,
)
from .grants import authorize_user, check, import_grant, init_db, refresh
from .keepalive import notify, refresh_all
from .keys import add_commands as _key_commands
from .listing import list_grants, metrics
from .web import reconnect_link_for, risc_register, serve_app

#: The exit code of a command whose output pipe closed (128 + SIGPIPE, as a shell shows it).
EXIT_SIGPIPE = 141

#: Adds one command (name, handler, help) and returns its parser.
Command = Callable[[str, Handler, str], argparse.ArgumentParser]

# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate the gmail_token table: health, alerts, keepalive, import, consent.",
        epilog="Exit codes: 0 ok, 1 failure or rows needing a person, 2 usage error.",
    )
    parser.add_argument(
        "--dsn",
        help="PostgreSQL URL or DSN (default: $GMAIL_TOKEN_STORE_DSN, then $DATABASE_URL)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait for a database connection (default: 5)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    for add in (
        _grant_commands,
        _web_commands,
        _risc_command,
        _view_commands,
        _keepalive_commands,
        _key_commands,
    ):
        add(command)
    return parser


def _grant_commands(command: Command) -> None:
    """init-db, import, authorize."""
    command(
        "init-db", init_db, "create the gmail_token table if it does not exist (never alters it)"
    )

    sub = command(
        "import", import_grant, "store a token.json (authorized-user JSON) as a user's grant"
    )
    sub.add_argument("file", type=Path, help="the authorized-user JSON file")
    sub.add_argument("--user-id", type=user_id_arg, required=True, help="the user's UUID")
    sub.add_argument(
        "--email", help="the Gmail address, stored in metadata (as unverified: a file proves none)"
    )
    sub.add_argument("--robeing-id", help="stored in the robeing_id column")

    sub = command(
        "authorize", authorize_user, "run the Google consent flow for a user and store the grant"
    )
    sub.add_argument("--client-secrets", type=Path, required=True, help="OAuth client secrets JSON")
    sub.add_argument("--user-id", type=user_id_arg, required=True, help="the user's UUID")
    sub.add_argument(
        "--email",
        help="the Gmail address that must consent (required for a user without a grant; "
        "a user with one must consent with the same Google account)",
    )
    sub.add_argument(
        "--scopes",
        nargs="+",
        default=[GMAIL_SEND],
        metavar="SCOPE",
        help=f"scopes to ask for (default: {GMAIL_SEND})",
    )
    sub.add_argument(
        "--no-browser", action="store_true", help="print the URL instead of opening it"
    )
    sub.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="seconds to wait for the browser's redirect (default: 300)",
    )
    sub.add_argument(
        "--port", type=int, default=0, help="loopback port for the redirect (default: any)"
    )


def _web_commands(command: Command) -> None:
    """reconnect-link, serve."""
    sub = command(
        "reconnect-link",
        reconnect_link_for,
        "print a signed link that lets the user connect Gmail again (the web consent)",
    )
    sub.add_argument("user_id", type=user_id_arg, metavar="USER_ID")
    sub.add_argument(
        "--public-url",
        metavar="URL",
        help="the service's URL (default: $GMAIL_TOKEN_STORE_PUBLIC_URL); the signing secret "
        "is $GMAIL_TOKEN_STORE_SECRET",
    )
    sub.add_argument(
        "--valid-days",
        type=positive_float,
        default=7.0,
        metavar="N",
        help="days the link stays valid (default: 7)",
    )

    sub = command(
        "serve", serve_app, "serve the web consent, the API and Google's security events on uvicorn"
    )
    sub.add_argument(
        "--client-secrets",
        type=Path,
        help="the web client's secrets JSON: serves the consent (with --public-url)",
    )
    sub.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL browsers reach this server at, behind its TLS proxy (default: "
        "$GMAIL_TOKEN_STORE_PUBLIC_URL); Google's redirect URI is URL/auth/gmail/callback",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    sub.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes (default: 1)"
    )
    sub.add_argument(
        "--api-keys-file",
        type=Path,
        metavar="FILE",
        help="serve the API to these keys (name=key or name=key:check, one per line); "
        "default: $GMAIL_TOKEN_STORE_API_KEYS",
    )
    sub.add_argument(
        "--risc",
        action="store_true",
        help="receive Google's security events at POST /risc (issuer from "
        "$GMAIL_TOKEN_STORE_RISC_CONFIG_URL, default Google's)",
    )
    sub.add_argument(
        "--risc-client-id",
        action="append",
        metavar="ID",
        help="another OAuth client id the security events may be for (repeatable)",
    )
    sub.add_argument(
        "--notify",
        metavar="URL",
        help="send notices (signed with $GMAIL_TOKEN_STORE_WEBHOOK_SECRET) for grants a "
        "security event kills",
    )
    sub.add_argument(
        "--cache-ttl",
        type=positive_float,
        metavar="SECONDS",
        help="seconds a worker answers the API from memory (default: the store's, 60; 0: "
        "every request reads the row)",
    )


def _risc_command(command: Command) -> None:
    """risc-register."""
    sub = command(
        "risc-register",
        risc_register,
        "point the Cloud project's Cross-Account Protection stream at this server's /risc",
    )
    sub.add_argument(
        "--service-account",
        type=Path,
        required=True,
        metavar="FILE",
        help="a service account key (JSON) with the RISC Configuration Admin role",
    )
    sub.add_argument(
        "--receiver-url",
        required=True,
        metavar="URL",
        help="where Google pushes events: https://<public-url>/risc",
    )
    sub.add_argument(
        "--api-url",
        default="https://risc.googleapis.com/v1beta",
        metavar="URL",
        help="Google's RISC API (default: https://risc.googleapis.com/v1beta)",
    )
    sub.add_argument(
        "--no-verify", action="store_true", help="do not ask Google for a verification event"
    )


def _view_commands(command: Command) -> None:
    """check, refresh, list, metrics."""
    sub = command("check", check, "print a user's grant health as JSON (exit 1 if not found)")
    sub.add_argument("user_id", type=user_id_arg, metavar="USER_ID")

    sub = command("refresh", refresh, "refresh a user's token if due (or always, with --force)")
    sub.add_argument("user_id", type=user_id_arg, metavar="USER_ID")
    sub.add_argument("--force", action="store_true", help="refresh even if the token is fresh")

    sub = command("list", list_grants, "list every grant with its state")
    sub.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    sub.add_argument(
        "--needs-attention",
        action="store_true",
        help="only rows that need a person; exit 1 when there are any (the alert)",
    )

    command(
        "metrics",
        metrics,
        "print the table's health in Prometheus's text format (for a textfile collector)",
    )


def _keepalive_commands(command: Command) -> None:
    """notify, refresh-all."""

    def notice_options(sub: argparse.ArgumentParser, flag: str, required: bool) -> None:
        sub.add_argument(
            flag,
            dest="webhook",
            required=required,
            metavar="URL",
            help="the webhook that receives the notices (signed with "
            "$GMAIL_TOKEN_STORE_WEBHOOK_SECRET, whsec_...)",
        )
        sub.add_argument(
            "--format",
            choices=["json", "slack"],
            default="json",
            help="a JSON message (default), or a Slack incoming-webhook text",
        )
        sub.add_argument(
            "--public-url",
            metavar="URL",
            help="the service's URL, for the reconnect links (default: "
            "$GMAIL_TOKEN_STORE_PUBLIC_URL; they are signed with $GMAIL_TOKEN_STORE_SECRET)",
        )
        sub.add_argument(
            "--consent-lifetime-days",
            type=positive_float,
            metavar="N",
            help="a consent dies N days after it was given (7 for an app in Google's "
            "Testing status): notice ahead of it (default: not checked)",
        )
        sub.add_argument(
            "--warn-days",
            type=positive_float,
            default=1.0,
            metavar="N",
            help="how many days ahead of a consent's end to notice (default: 1)",
        )

    sub = command(
        "notify",
        notify,
        "send a signed notice for every grant that needs a person or will die soon, once",
    )
    notice_options(sub, "--webhook", required=True)

    sub = command("refresh-all", refresh_all, "keepalive: refresh every due or idle grant")
    notice_options(sub, "--notify", required=False)
    sub.add_argument(
        "--within",
        type=positive_float,
        metavar="SECONDS",
        help="refresh tokens expiring within SECONDS (default: the refresh margin)",
    )
    sub.add_argument(
        "--idle-days",
        type=positive_float,
        default=30.0,
        metavar="N",
        help="also refresh grants not refreshed for N days (default: 30)",
    )
    sub.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="refreshes in flight at once (default: 4)",
    )


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not verbose:
        # Quiet: expected failures are reported once, by us, on one line. A handler that
        # drops everything also keeps logging's last-resort stderr handler out.
        root.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("gmail_token_store").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # the authorize URL must show when piped
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (TokenStoreError, Failure) as exc:
        say(f"{PROG}: error: {printable(str(exc), 1000)}", sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted", sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`list | head`): stop quietly, as a pipeline expects, and
        # keep the interpreter's last flush of stdout from failing again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_SIGPIPE
