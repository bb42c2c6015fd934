"""Google's revocations (Cross-Account Protection, RISC): which grants an event kills.

Google pushes a security event when it revokes a user's tokens or sessions, disables or
purges an account, or revokes one refresh token. The receiver (`gmail_token_store.web`)
checks the event; here the grants it names are recorded dead, like an `invalid_grant`,
with the event as the reason, so every process stops using them at once.
"""

from __future__ import annotations

import base64
import hashlib
import logging

from .effects import (
    Commit,
    Emit,
    Execute,
    Flow,
    Forget,
    LockRow,
    Query,
    Statement,
    once_more_if_lost,
)
from .errors import LockWaitTimeout, RefreshFailedError
from .record import TokenRecord, epoch, from_epoch, utc_naive
from .state import Core
from .text import describe_user
from .writes import metadata_with_failure, to_json

#: How Google names a refresh token in a `token-revoked` event (RISC): its first 16
#: characters, or base64(sha512(sha512(token))).
TOKEN_IDENTIFIERS = ("prefix", "hash_base64_sha512_sha512")


def token_identifier(refresh_token: str, alg: str) -> str:
    """What `alg` makes of a refresh token (see TOKEN_IDENTIFIERS)."""
    if alg == "prefix":
        return refresh_token[:16]
    inner = hashlib.sha512(refresh_token.encode()).digest()
    return base64.b64encode(hashlib.sha512(inner).digest()).decode("ascii")


def sealed_form(alg: str, wanted: str) -> str:
    """An identifier as a sealed row keeps it (`sealing.token_identifiers`): the prefix is
    kept hashed (it is a sixth of the token), the hash as it is."""
    return hashlib.sha256(wanted.encode()).hexdigest() if alg == "prefix" else wanted


def sealed_identifier(record: TokenRecord, alg: str) -> str | None:
    ids = record.sealed_ids or {}
    return ids.get("prefix_sha256" if alg == "prefix" else "hash_base64_sha512_sha512")


def _normalised_identifier(alg: str, value: str) -> str:
    if alg == "prefix":
        return value
    # Google does not say which base64: accept urlsafe and unpadded forms too.
    text = value.strip().replace("-", "+").replace("_", "/")
    return text + "=" * (-len(text) % 4)


def record_revocation(
    core: Core,
    *,
    reason: str,
    issued_at: float,
    account_id: str | None = None,
    token: tuple[str, str] | None = None,
) -> Flow[list[str]]:
    """Record as dead (like invalid_grant) every grant Google says it revoked; return their
    user ids.

    By account (`account_id`, the Google account id a verified consent recorded): only a
    grant consented to before the event (`issued_at`, epoch seconds) dies, so that an old
    event, replayed or late, never kills a reconnected grant. By token (`token`: the
    identifier algorithm and value of a `token-revoked` event): the grant holding that very
    refresh token. Each under its row lock, checked again there.
    """
    if (account_id is None) == (token is None):
        raise ValueError("give either account_id or token")
    if token is not None:
        alg, value = token
        if alg not in TOKEN_IDENTIFIERS:
            raise ValueError(f"unknown token identifier algorithm {alg!r}")
        wanted = _normalised_identifier(alg, value)
        statement = (
            Statement.FIND_BY_TOKEN_PREFIX if alg == "prefix" else Statement.FIND_BY_TOKEN_HASH
        )
        rows = yield from once_more_if_lost(
            Query(statement, {"identifier": wanted, "sealed": sealed_form(alg, wanted)})
        )

        def matches(record: TokenRecord) -> bool:
            if record.refresh_token:
                return token_identifier(record.refresh_token, alg) == wanted
            # sealed (perhaps with a key this store lacks): the identifiers beside the seal
            return sealed_identifier(record, alg) == sealed_form(alg, wanted)

    else:
        rows = yield from once_more_if_lost(
            Query(Statement.FIND_BY_ACCOUNT, {"account_id": account_id})
        )

        def matches(record: TokenRecord) -> bool:
            consented = record.consented_at
            return (
                record.google_account_id == account_id
                and consented is not None
                and epoch(consented) <= issued_at
            )

    dead: list[str] = []
    for row in rows:
        if not matches(core.parse(row)):
            continue
        user_id: str = row[1]
        started = core.clock.monotonic()
        try:
            locked = yield from once_more_if_lost(
                LockRow(
                    user_id,
                    wait_ms=int(core.windows.lock_timeout * 1000),
                    idle_timeout_ms=int(core.windows.idle_in_transaction_timeout * 1000),
                )
            )
        except LockWaitTimeout:
            raise RefreshFailedError(
                user_id, None, "the row stayed locked while a revocation waited", cause="busy"
            ) from None
        record = core.parse(locked.row) if locked.row is not None else None
        if record is None or not matches(record):  # changed meanwhile (a new consent)
            yield from Commit()
            continue
        now = utc_naive(from_epoch(core.db_now()))
        metadata = metadata_with_failure(record, "revoked", reason, now, source="risc")
        if metadata is None:  # unreadable metadata: nothing can be recorded
            yield from Commit()
            continue
        yield from Execute(
            Statement.RECORD_FAILURE,
            {"metadata": to_json(metadata), "row_id": record.row_id},
            commit=True,
        )
        yield from Forget(user_id)
        email = record.email
        yield from Emit(
            "reauth_required",
            user_id,
            email,
            started,
            error="invalid_grant",
            level=logging.WARNING,
            message=f"the Gmail grant of {describe_user(user_id, email)} was revoked: Google "
            f"reported {reason}",
        )
        dead.append(user_id)
    return dead
