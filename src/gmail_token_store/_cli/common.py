"""What every command shares: exit codes, one-line failures, the store, argument types,
the consent's secret and public URL."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO
from urllib.parse import urlsplit

from .. import StoreOptions, TokenStatus, TokenStore
from .._core.errors import parse_user_id
from .._core.text import describe_user, printable

PROG = "gmail-token-store"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DAY = 86_400

Handler = Callable[[argparse.Namespace], int]


class Failure(Exception):
    """An expected failure: print the message on one line and exit 1."""


def say(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


@contextmanager
def open_store(
    args: argparse.Namespace, max_connections: int = 2, *, unsealing: bool = False
) -> Iterator[TokenStore]:
    """The store the environment configures; `unsealing`: one that writes plaintext
    whatever GMAIL_TOKEN_STORE_SEAL says (decrypt-all)."""
    options: StoreOptions = {"connect_timeout": args.connect_timeout}
    options["max_connections"] = max_connections
    if unsealing:
        options["seal"] = False
    with TokenStore.from_env(args.dsn, **options) as store:
        yield store


def user_id_arg(value: str) -> str:
    """argparse type: a UUID, else a usage error (exit 2)."""
    try:
        return parse_user_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return number


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {value!r}")
    return number


def say_stored(what: str, status: TokenStatus) -> None:
    scopes = printable(" ".join(status.scopes or ()) or "(none)")
    who = describe_user(status.user_id, status.email)
    say(f"{what} {who}: state {status.state}, scopes {scopes}")


def secret() -> str:
    secret = os.environ.get("GMAIL_TOKEN_STORE_SECRET", "")
    if len(secret) < 32:
        raise Failure(
            "set GMAIL_TOKEN_STORE_SECRET to a random secret of at least 32 characters "
            "(it signs reconnect links and consent states; e.g. `openssl rand -base64 32`)"
        )
    return secret


def public_url(url: str | None) -> str:
    found = url or os.environ.get("GMAIL_TOKEN_STORE_PUBLIC_URL", "")
    parts = urlsplit(found)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        raise Failure(
            "give --public-url (or GMAIL_TOKEN_STORE_PUBLIC_URL): the URL the service is "
            "reached at, e.g. https://mail.example.com"
        )
    return found.rstrip("/")
