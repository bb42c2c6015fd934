"""The commands on one grant: init-db, import, authorize, check, refresh."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
