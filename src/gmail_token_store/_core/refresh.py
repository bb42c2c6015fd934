"""The locked refresh, written once: lock, re-check, request, write-back, late save.

Both shells drive these generators (see `effects`). The order, and why:

1. Lock the row (`LockRow`): one round trip opens the transaction, sets its
   timeouts and takes `FOR NO KEY UPDATE` (or only tries it, SKIP LOCKED, in the advisory
   window). A connection that broke before the lock is retried once: nothing was sent yet.
2. Write a kept grant first if the row is older than it (see `kept`): the refresh must
   use the newest refresh token this process knows.
3. Re-check under the lock: a caller that waited finds the token somebody else refreshed.
4. The token request (`exchange`), with the lock held, so exactly one request is made.
5. From the answer on, the grant is kept in memory, then written under the lock and
   committed. If that fails (the connection dropped, the session timed out, the database
   went away, an interrupt arrived), it is written by compare-and-set on a fresh
   connection, or stays kept until the database answers again. An interrupt still
   reaches its own thread, after the grant is secured.
6. `invalid_grant` is recorded in the row (committed) before ReauthRequiredError is
   raised, so every process stops trying a dead grant at once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from .effects import (
    Commit,
    Emit,
    Execute,
    Flow,
    Forget,
    LockRow,
    Log,
    Query,
    Statement,
    once_more_if_lost,
)
from .errors import (
    DatabaseUnavailableError,
    InvalidTokenRecordError,
    LockWaitTimeout,
    OAuthClientError,
    ReauthRequiredError,
    RefreshFailedError,
    TokenNotFoundError,
    TokenStoreError,
)
from .exchange import EndpointError, Grant, exchange
from .kept import KeptGrant, Verdict, verdict
from .policy import raise_if_unusable
from .record import TokenRecord, from_epoch, utc_naive
from .state import Core
from .text import describe_user
from .writes import (
    UnwritableError,
    expiry_param,
    metadata_with_failure,
    metadata_without_failure,
    optional_json,
    refreshed_columns,
    to_json,
)

#: Decides, under the lock, whether the row (as it is now) still needs a refresh.
Need = Callable[[TokenRecord, float], bool]


def locked_refresh(
    core: Core, seen: TokenRecord, need: Need, lock_wait: float | None
) -> Flow[TokenRecord]:
    """Refresh `seen`'s row under its lock unless `need(row, db_now)` says otherwise.

    `lock_wait`: seconds to wait for the lock; None only tries it, and then `seen` comes
    back at once if another transaction holds it.
    """
    started = core.clock.monotonic()
    locked = yield from _lock(core, seen, lock_wait, started)
    if locked is None:
        return seen  # locked by a refresher elsewhere: the current token stays in use
    record, db_now = locked

    kept = core.kept.get(record.user_id)
    if kept is not None and verdict(kept, record) is Verdict.WRITE:
        # The row is older than a grant we hold: write ours first, never refresh with a
        # refresh token the endpoint may have revoked. Then start over on the new row.
        rows = yield from Execute(
            Statement.WRITE_GRANT,
            grant_params(core, record, kept),
            user_id=record.user_id,
            commit=True,
        )
        core.kept.saved(record.user_id, kept.access_token)
        restored = core.parse(rows[0])
        yield from _restored(restored, started)
        if not need(restored, db_now):
            return restored
        return (yield from locked_refresh(core, restored, need, lock_wait))

    if not need(record, db_now):
        yield from Commit()
        return record  # refreshed by someone else while we waited
    raise_if_unusable(record, core.policy)
    _raise_if_unwritable(record)
    grant = yield from _request(core, record, started)
    kept = _keep(core, record, grant)  # from here on, the grant must not be lost
    return (yield from _write_back(core, record, kept, started))


def _lock(
    core: Core, seen: TokenRecord, lock_wait: float | None, started: float
) -> Flow[tuple[TokenRecord, float] | None]:
    """Open the transaction and lock the row: (the row, the database's time), or None when
    only trying and another transaction holds it."""
    uid, email = seen.user_id, seen.email
    lock = LockRow(
        uid,
        wait_ms=None if lock_wait is None else int(lock_wait * 1000),
        idle_timeout_ms=int(core.windows.idle_in_transaction_timeout * 1000),
    )
    try:
        # Nothing was sent to the token endpoint yet: safe to run again.
        locked = yield from once_more_if_lost(lock)
    except LockWaitTimeout:
        yield from Emit("lock_timeout", uid, email, started, error="lock_timeout")
        raise RefreshFailedError(
            uid,
            email,
            f"another process held the row lock for more than {lock_wait or 0:g} s",
            cause="lock_timeout",
        ) from None
    if locked.row is None or locked.clock is None:
        if lock_wait is None:
            return None
        raise TokenNotFoundError(uid)
    core.db_clock.observe(locked.clock)
    core.expiry_has_time_zone = locked.expiry_has_time_zone
    return core.parse(locked.row), locked.clock.db_now


def _request(core: Core, record: TokenRecord, started: float) -> Flow[Grant]:
    """The token request, with the lock held; a dead grant is recorded before raising."""
    # raise_if_unusable guaranteed these; the asserts narrow the types.
    assert record.refresh_token  # noqa: S101
    assert record.client_id  # noqa: S101
    assert record.client_secret  # noqa: S101
    try:
        return (
            yield from exchange(
                record.token_uri,
                record.refresh_token,
                record.client_id,
                record.client_secret,
                http_timeout=core.http_timeout,
                clock=core.clock,
            )
        )
    except EndpointError as exc:
        if exc.kind == "revoked":
            raise (yield from _record_revocation(core, record, exc, started)) from None
        failure = _endpoint_failure(record, exc)
        yield from Emit(
            "refresh_failed",
            record.user_id,
            record.email,
            started,
            error=exc.cause,
            level=logging.INFO,
            message=str(failure),
        )
        raise failure from None


def _write_back(
    core: Core, record: TokenRecord, kept: KeptGrant, started: float
) -> Flow[TokenRecord]:
    """Write the kept grant under the lock and commit; if that fails, secure it elsewhere.

    An interrupt or an error an operator must see is raised once the grant is secured; a
    lost database hands the new token out (saved late, or kept until it can be).
    """
    uid, email = record.user_id, record.email
    try:
        rows = yield from Execute(
            Statement.WRITE_GRANT, grant_params(core, record, kept), user_id=uid, commit=True
        )
    except GeneratorExit:
        raise  # the flow is being discarded, not driven: nothing can be done here
    except BaseException as exc:
        core.kept.unsaved_now(uid, kept.access_token)
        saved = yield from save_kept(core, uid, email, started, reason=_why(exc))
        if not isinstance(exc, DatabaseUnavailableError):
            raise
        return saved if saved is not None else in_memory(record, kept)
    core.kept.saved(uid, kept.access_token)
    updated = core.parse(rows[0])
    yield from Emit(
        "refreshed",
        uid,
        email,
        started,
        message=f"refreshed the Gmail token of {describe_user(uid, email)}; it expires "
        f"{updated.expiry} UTC",
    )
    return updated


def _why(exc: BaseException) -> str:
    if isinstance(exc, TokenStoreError):
        return str(exc)
    return type(exc).__name__


def _keep(core: Core, record: TokenRecord, grant: Grant) -> KeptGrant:
    """Keep a fresh grant (being written); its expiry counted on the database's clock."""
    assert record.refresh_token  # noqa: S101 - a refresh needs one
    answered = core.clock.monotonic()
    kept = KeptGrant(
        user_id=record.user_id,
        row_id=record.row_id,
        access_token=grant.access_token,
        refresh_token=grant.rotated_refresh_token or record.refresh_token,
        replaced_refresh_token=record.refresh_token,
        expiry_epoch=core.db_now() + grant.expires_in,
        scopes=grant.scopes,
        state="writing",
        kept_at=answered,
    )
    core.kept.keep(kept, answered)
    return kept


def grant_params(core: Core, record: TokenRecord, kept: KeptGrant) -> dict[str, Any]:
    """Parameters of WRITE_GRANT (WRITE_GRANT_IF_VERSION also takes `version`)."""
    cleaned_metadata = metadata_without_failure(record)
    token_data, oauth_config = refreshed_columns(
        record, kept.access_token, kept.refresh_token, core.sealer
    )
    return {
        "token_data": to_json(token_data),
        "set_oauth_config": oauth_config is not None,
        "oauth_config": optional_json(oauth_config),
        "expiry": expiry_param(from_epoch(kept.expiry_epoch), core.expiry_has_time_zone),
        "scopes": optional_json(list(kept.scopes) if kept.scopes is not None else None),
        "set_metadata": cleaned_metadata is not None,
        "metadata": optional_json(cleaned_metadata),
        "row_id": record.row_id,
    }


def _raise_if_unwritable(record: TokenRecord) -> None:
    # Checked before the token request: a grant that could not be written would be lost.
    try:
        to_json(record.token_data)
        optional_json(record.metadata)
    except UnwritableError as exc:
        raise InvalidTokenRecordError(record.user_id, record.email, str(exc)) from None


def in_memory(record: TokenRecord, kept: KeptGrant) -> TokenRecord:
    """The record as it would be with the kept grant written: what is handed out unsaved."""
    return dataclasses.replace(
        record,
        access_token=kept.access_token,
        refresh_token=kept.refresh_token,
        expiry=from_epoch(kept.expiry_epoch),
        expiry_epoch=kept.expiry_epoch,
    )


def _restored(record: TokenRecord, started: float) -> Emit:
    return Emit(
        "grant_restored",
        record.user_id,
        record.email,
        started,
        message=f"wrote the kept Gmail grant of {describe_user(record.user_id, record.email)} "
        "into its row (the row did not hold it)",
    )


def save_kept(  # noqa: PLR0911 - one return per outcome, each commented
    core: Core, user_id: str, email: str | None, started: float, *, reason: str
) -> Flow[TokenRecord | None]:
    """Write the user's kept grant if the row is older than it, by compare-and-set.

    Returns the row as written (or as found holding the grant), or None when the grant
    stays kept (the database did not answer) or was superseded by a newer writer. Never
    raises a store error: it runs while another error or an interrupt is on its way.
    """
    for _ in range(3):
        kept = core.kept.get(user_id)
        if kept is None:
            return None
        try:
            rows = yield from once_more_if_lost(
                Query(Statement.READ_ROW, {"user_id": user_id}, user_id=user_id)
            )
            if not rows:
                core.kept.forget(user_id, kept.access_token)
                yield from Log(
                    logging.WARNING, f"the row of user {user_id} is gone; its kept grant is dropped"
                )
                return None
            record = core.parse(rows[0])
            found = verdict(kept, record)
            if found is Verdict.IN_ROW:
                core.kept.saved(user_id, kept.access_token)
                return record
            if found is Verdict.SUPERSEDED:
                core.kept.forget(user_id, kept.access_token)
                return None
            rows = yield from Query(
                Statement.WRITE_GRANT_IF_VERSION,
                {**grant_params(core, record, kept), "version": record.version},
                user_id=user_id,
            )
        except TokenStoreError as exc:
            core.kept.defer_flush(core.clock.monotonic(), database_down=True)
            yield from Emit(
                "grant_kept",
                user_id,
                email,
                started,
                error="unsaved",
                level=logging.WARNING,
                message=f"refreshed the Gmail token of {describe_user(user_id, email)} but could "
                "not save it yet "
                f"({reason}; then {exc}); it is kept in memory and written when the database "
                "answers again",
            )
            return None
        if rows:
            core.kept.saved(user_id, kept.access_token)
            restored = core.parse(rows[0])
            yield from _restored(restored, started)
            return restored
    # The row kept changing, or another transaction holds it: try again a little later.
    core.kept.defer_flush(core.clock.monotonic(), database_down=False)
    return None


def _record_revocation(
    core: Core, record: TokenRecord, exc: EndpointError, started: float
) -> Flow[ReauthRequiredError]:
    metadata = metadata_with_failure(
        record, exc.error, exc.description, utc_naive(from_epoch(core.db_now()))
    )
    try:
        if metadata is None:
            yield from Commit()
        else:
            yield from Execute(
                Statement.RECORD_FAILURE,
                {"metadata": to_json(metadata), "row_id": record.row_id},
                commit=True,
            )
    except DatabaseUnavailableError as lost:  # the grant is dead all the same
        yield from Log(
            logging.WARNING, f"could not record the dead grant of user {record.user_id}: {lost}"
        )
    yield from Forget(record.user_id)
    detail = f" ({exc.description})" if exc.description else ""
    error = ReauthRequiredError(
        record.user_id, record.email, f"the token endpoint answered {exc.error}{detail}"
    )
    yield from Emit(
        "reauth_required",
        record.user_id,
        record.email,
        started,
        error="invalid_grant",
        level=logging.WARNING,
        message=str(error),
    )
    return error


def _endpoint_failure(record: TokenRecord, exc: EndpointError) -> TokenStoreError:
    if exc.kind == "client":
        return OAuthClientError(record.user_id, record.email, exc.error, exc.description)
    detail = f" ({exc.description})" if exc.description else ""
    return RefreshFailedError(
        record.user_id,
        record.email,
        exc.error + detail,
        retryable=exc.kind == "transient",
        cause=exc.cause,
    )
