"""The commands on one grant or the table: init-db, import, authorize, check, refresh,
list, metrics."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import TokenStatus
from .._core.text import printable
from ..metrics import exposition
from .common import EXIT_FAILURE, EXIT_OK, Failure, open_store, say, say_stored
from .token_file import TokenFileError, read_token_file


def init_db(args: argparse.Namespace) -> int:
    with open_store(args, max_connections=1) as store:
        created = store.create_table()
    say("created table gmail_token" if created else "table gmail_token exists; left unchanged")
    return EXIT_OK


def import_grant(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        credentials = read_token_file(path)
    except TokenFileError as exc:
        raise Failure(
            f"{path.name} is not a usable token file: {exc}; nothing was written"
        ) from None
    except OSError as exc:
        raise Failure(f"cannot read {path}: {exc.strerror}") from None
    with open_store(args) as store:
        store.save(
            args.user_id,
            credentials,
            email=args.email,
            robeing_id=args.robeing_id,
            metadata={"source_file": path.name},
        )
        say_stored(f"imported {path.name} for", store.check(args.user_id))
    return EXIT_OK


def authorize_user(args: argparse.Namespace) -> int:
    from .authorize import authorize  # noqa: PLC0415 - the consent flow: only this command

    with open_store(args) as store:
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
            raise Failure(f"{exc}; nothing was stored") from None
        say_stored("authorized", store.check(args.user_id))
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        status = store.check(args.user_id)
    say(json.dumps(status.to_dict(), indent=2))
    return EXIT_OK if status.status == "found" else EXIT_FAILURE


def refresh(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        result = store.refresh(args.user_id, force=args.force)
    say(json.dumps(result.to_dict(include_token=False), indent=2))
    return EXIT_OK


def time_left(status: TokenStatus) -> str:
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
CELL = 40


def table(statuses: Sequence[TokenStatus]) -> str:
    header = ("USER_ID", "EMAIL", "ROBEING", "STATE", "LEFT", "LAST_REFRESH", "ACCOUNT")
    rows = [
        (
            printable(status.user_id, CELL),
            printable(status.email or "-", CELL),
            printable(status.robeing_id or "-", CELL),
            status.state,
            time_left(status),
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


def by_key(statuses: Sequence[TokenStatus]) -> dict[str, int]:
    """Rows sealed with each key id (an old key can leave the keyring at 0)."""
    counts: dict[str, int] = {}
    for status in statuses:
        if status.key_id is not None:
            counts[status.key_id] = counts.get(status.key_id, 0) + 1
    return counts


def list_grants(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        statuses = store.check_all()
    attention = [status for status in statuses if status.needs_attention]
    shown = attention if args.needs_attention else statuses
    if args.json:
        say(json.dumps([status.to_dict() for status in shown], indent=2))
    else:
        if shown:
            say(table(shown))
        for status in shown:
            if status.needs_attention and status.problem:
                say(f"{status.user_id}: {status.state}: {printable(status.problem)}")
        say(f"{len(statuses)} grants, {len(attention)} need attention")
        sealed = by_key(statuses)
        if sealed:
            plaintext = len(statuses) - sum(sealed.values())
            counts = ", ".join(f"{printable(key, 64)}: {n}" for key, n in sorted(sealed.items()))
            say(f"sealed by key: {counts}; plaintext: {plaintext}")
    if args.needs_attention and attention:
        return EXIT_FAILURE
    return EXIT_OK


def metrics(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        statuses = store.check_all()
    sys.stdout.write(exposition(statuses))
    return EXIT_OK
