"""The `gmail-token-store` command: operator tooling on top of TokenStore.

Exit codes: 0 success; 1 an expected failure (bad DSN, unknown user, revoked grant, a
malformed file) or, for `list --needs-attention` and `refresh-all`, rows that need a
person; 2 a usage error. Expected failures print one line on stderr, never a traceback,
and no output ever carries a token, a refresh token, a client secret or a DSN password.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from .. import (
    GMAIL_SEND,
    KeepaliveReport,
    TokenStatus,
    TokenStore,
    TokenStoreError,
    __version__,
)
from .._core.errors import parse_user_id
from .._core.text import describe_user, printable
from .metrics import exposition
from .token_file import TokenFileError, read_token_file

PROG = "gmail-token-store"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DAY = 86_400

Handler = Callable[[argparse.Namespace], int]


class _Failure(Exception):
    """An expected failure: print the message on one line and exit 1."""


def _say(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


@contextmanager
def _store(args: argparse.Namespace, max_connections: int = 2) -> Iterator[TokenStore]:
    with TokenStore.from_env(
        args.dsn, connect_timeout=args.connect_timeout, max_connections=max_connections
    ) as store:
        yield store


def _user_id(value: str) -> str:
    """argparse type: a UUID, else a usage error (exit 2)."""
    try:
        return parse_user_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value!r}")
    return number


def _say_stored(what: str, status: TokenStatus) -> None:
    scopes = printable(" ".join(status.scopes or ()) or "(none)")
    who = describe_user(status.user_id, status.email)
    _say(f"{what} {who}: state {status.state}, scopes {scopes}")


# --- commands ------------------------------------------------------------------------------


def _init_db(args: argparse.Namespace) -> int:
    with _store(args, max_connections=1) as store:
        created = store.create_table()
    _say("created table gmail_token" if created else "table gmail_token exists; left unchanged")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        credentials = read_token_file(path)
    except TokenFileError as exc:
        raise _Failure(
            f"{path.name} is not a usable token file: {exc}; nothing was written"
        ) from None
    except OSError as exc:
        raise _Failure(f"cannot read {path}: {exc.strerror}") from None
    with _store(args) as store:
        store.save(
            args.user_id,
            credentials,
            email=args.email,
            robeing_id=args.robeing_id,
            metadata={"source_file": path.name},
        )
        _say_stored(f"imported {path.name} for", store.check(args.user_id))
    return EXIT_OK


def _authorize(args: argparse.Namespace) -> int:
    from .authorize import authorize  # noqa: PLC0415 - the consent flow: only this command

    with _store(args) as store:
        try:
            authorize(
                store,
                client_secrets=args.client_secrets,
                user_id=args.user_id,
                email=args.email,
                scopes=args.scopes,
                open_browser=not args.no_browser,
                timeout=args.timeout,
                port=args.port,
            )
        except TimeoutError as exc:
            raise _Failure(f"{exc}; nothing was stored") from None
        _say_stored("authorized", store.check(args.user_id))
    return EXIT_OK


def _reconnect_link(args: argparse.Namespace) -> int:
    from ..consent import reconnect_link  # noqa: PLC0415

    _say(
        reconnect_link(
            args.user_id,
            secret=_secret(),
            public_url=_public_url(args.public_url),
            valid_for=args.valid_days * DAY,
        )
    )
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    try:
        from . import serve  # noqa: PLC0415 - needs the web extra
    except ImportError:
        raise _Failure(
            "serve needs the web extra (Starlette, uvicorn): pip install 'gmail-token-store[web]'"
        ) from None

    serve.run(
        client_secrets=args.client_secrets,
        public_url=_public_url(args.public_url),
        secret=_secret(),
        dsn=args.dsn,
        host=args.host,
        port=args.port,
    )
    return EXIT_OK


def _secret() -> str:
    secret = os.environ.get("GMAIL_TOKEN_STORE_SECRET", "")
    if len(secret) < 32:
        raise _Failure(
            "set GMAIL_TOKEN_STORE_SECRET to a random secret of at least 32 characters "
            "(it signs reconnect links and consent states; e.g. `openssl rand -base64 32`)"
        )
    return secret


def _public_url(url: str | None) -> str:
    found = url or os.environ.get("GMAIL_TOKEN_STORE_PUBLIC_URL", "")
    parts = urlsplit(found)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        raise _Failure(
            "give --public-url (or GMAIL_TOKEN_STORE_PUBLIC_URL): the URL the service is "
            "reached at, e.g. https://mail.example.com"
        )
    return found.rstrip("/")


def _check(args: argparse.Namespace) -> int:
    with _store(args) as store:
        status = store.check(args.user_id)
    _say(json.dumps(status.to_dict(), indent=2))
    return EXIT_OK if status.status == "found" else EXIT_FAILURE


def _refresh(args: argparse.Namespace) -> int:
    with _store(args) as store:
        result = store.refresh(args.user_id, force=args.force)
    _say(json.dumps(result.to_dict(include_token=False), indent=2))
    return EXIT_OK


def _time_left(status: TokenStatus) -> str:
    seconds = status.remaining_seconds
    if seconds is None:
        return "-"
    if status.is_expired:
        return "expired"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d"


#: Widest a table cell from the database may be: a 1 MB email must not pad every line.
_CELL = 40


def _table(statuses: Sequence[TokenStatus]) -> str:
    header = ("USER_ID", "EMAIL", "ROBEING", "STATE", "LEFT", "LAST_REFRESH", "ACCOUNT")
    rows = [
        (
            printable(status.user_id, _CELL),
            printable(status.email or "-", _CELL),
            printable(status.robeing_id or "-", _CELL),
            status.state,
            _time_left(status),
            status.last_refreshed.strftime("%Y-%m-%d %H:%M") if status.last_refreshed else "-",
            "verified" if status.account_verified else "unverified",
        )
        for status in statuses
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        statuses = store.check_all()
    attention = [status for status in statuses if status.needs_attention]
    shown = attention if args.needs_attention else statuses
    if args.json:
        _say(json.dumps([status.to_dict() for status in shown], indent=2))
    else:
        if shown:
            _say(_table(shown))
        for status in shown:
            if status.needs_attention and status.problem:
                _say(f"{status.user_id}: {status.state}: {printable(status.problem)}")
        _say(f"{len(statuses)} grants, {len(attention)} need attention")
    if args.needs_attention and attention:
        return EXIT_FAILURE
    return EXIT_OK


def _metrics(args: argparse.Namespace) -> int:
    with _store(args) as store:
        statuses = store.check_all()
    sys.stdout.write(exposition(statuses))
    return EXIT_OK


def _print_progress(report: KeepaliveReport) -> None:
    _say(
        f"refresh-all: {report.processed}/{report.due} done, {report.refreshed} refreshed, "
        f"{len(report.need_reauth) + len(report.failed)} need a person",
        sys.stderr,
    )


def _refresh_all(args: argparse.Namespace) -> int:
    within = args.within
    # One connection and one HTTP connection per worker, plus one for the listing.
    with _store(args, max_connections=args.concurrency + 1) as store:
        report = store.refresh_all(
            within=within,
            idle_days=args.idle_days,
            concurrency=args.concurrency,
            progress=_print_progress,
        )
    _say(f"refresh-all: {report.checked} grants, {report.due} due or idle")
    _say(f"  refreshed:             {report.refreshed}")
    _say(f"  still valid:           {report.still_valid}")
    _say(f"  need re-authorization: {len(report.need_reauth)}")
    _say(f"  failed:                {len(report.failed) + len(report.retry_later)}")
    for label, rows in (
        ("need re-authorization", report.need_reauth),
        ("failed (an operator must look)", report.failed),
        ("failed (will be retried next run)", report.retry_later),
    ):
        for who, why in rows:
            _say(f"{label}: {who}: {why}")
    return EXIT_FAILURE if report.needs_a_person else EXIT_OK


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
        type=_positive_float,
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

    command(
        "init-db", _init_db, "create the gmail_token table if it does not exist (never alters it)"
    )

    sub = command("import", _import, "store a token.json (authorized-user JSON) as a user's grant")
    sub.add_argument("file", type=Path, help="the authorized-user JSON file")
    sub.add_argument("--user-id", type=_user_id, required=True, help="the user's UUID")
    sub.add_argument(
        "--email", help="the Gmail address, stored in metadata (as unverified: a file proves none)"
    )
    sub.add_argument("--robeing-id", help="stored in the robeing_id column")

    sub = command(
        "authorize", _authorize, "run the Google consent flow for a user and store the grant"
    )
    sub.add_argument("--client-secrets", type=Path, required=True, help="OAuth client secrets JSON")
    sub.add_argument("--user-id", type=_user_id, required=True, help="the user's UUID")
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
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="seconds to wait for the browser's redirect (default: 300)",
    )
    sub.add_argument(
        "--port", type=int, default=0, help="loopback port for the redirect (default: any)"
    )

    sub = command(
        "reconnect-link",
        _reconnect_link,
        "print a signed link that lets the user connect Gmail again (the web consent)",
    )
    sub.add_argument("user_id", type=_user_id, metavar="USER_ID")
    sub.add_argument(
        "--public-url",
        metavar="URL",
        help="the service's URL (default: $GMAIL_TOKEN_STORE_PUBLIC_URL); the signing secret "
        "is $GMAIL_TOKEN_STORE_SECRET",
    )
    sub.add_argument(
        "--valid-days",
        type=_positive_float,
        default=7.0,
        metavar="N",
        help="days the link stays valid (default: 7)",
    )

    sub = command("serve", _serve, "serve the web consent (and API) on uvicorn")
    sub.add_argument(
        "--client-secrets", type=Path, required=True, help="the web client's secrets JSON"
    )
    sub.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL browsers reach this server at, behind its TLS proxy (default: "
        "$GMAIL_TOKEN_STORE_PUBLIC_URL); Google's redirect URI is URL/auth/gmail/callback",
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")

    sub = command("check", _check, "print a user's grant health as JSON (exit 1 if not found)")
    sub.add_argument("user_id", type=_user_id, metavar="USER_ID")

    sub = command("refresh", _refresh, "refresh a user's token if due (or always, with --force)")
    sub.add_argument("user_id", type=_user_id, metavar="USER_ID")
    sub.add_argument("--force", action="store_true", help="refresh even if the token is fresh")

    sub = command("list", _list, "list every grant with its state")
    sub.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    sub.add_argument(
        "--needs-attention",
        action="store_true",
        help="only rows that need a person; exit 1 when there are any (the alert)",
    )

    command(
        "metrics",
        _metrics,
        "print the table's health in Prometheus's text format (for a textfile collector)",
    )

    sub = command("refresh-all", _refresh_all, "keepalive: refresh every due or idle grant")
    sub.add_argument(
        "--within",
        type=_positive_float,
        metavar="SECONDS",
        help="refresh tokens expiring within SECONDS (default: the refresh margin)",
    )
    sub.add_argument(
        "--idle-days",
        type=_positive_float,
        default=30.0,
        metavar="N",
        help="also refresh grants not refreshed for N days (default: 30)",
    )
    sub.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="refreshes in flight at once (default: 4)",
    )
    return parser


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
    except (TokenStoreError, _Failure) as exc:
        _say(f"{PROG}: error: {printable(str(exc), 1000)}", sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted", sys.stderr)
        return 130
