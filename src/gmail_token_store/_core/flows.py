"""Every store operation as a flow of effects: reading, serving, refreshing, checking, saving.

The sync and the async shell drive these generators (see `effects`); what to do at each
step is decided here, once, and the locked refresh itself is in `refresh`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .effects import (
    Emit,
    Execute,
    Flow,
    Forget,
    LockRow,
    Log,
    Query,
    ReadRow,
    Row,
    Shared,
    Statement,
    once_more_if_lost,
)
from .errors import (
    DatabaseUnavailableError,
    FlightTimeout,
    InsufficientScopesError,
    InvalidTokenRecordError,
    LeaderInterrupted,
    LockWaitTimeout,
    MissingKeyError,
    RefreshFailedError,
    TokenNotFoundError,
)
from .kept import Verdict, verdict
from .policy import raise_if_unusable
from .record import TokenRecord
from .refresh import Need, locked_refresh, save_kept
from .state import Core
from .status import TokenStatus, classify, not_found
from .text import describe_user
from .windows import Plan, still_valid
from .writes import grant_columns, optional_json, to_json


def read_row(core: Core, user_id: str) -> Flow[tuple[TokenRecord, float]]:
    """The hot path: the user's row and the database's time it was read at.

    One retry on a fresh connection if the first one broke (a server restart). A row older
    than a grant this process holds for it (see `kept`) is brought up to date first.
    """
    read = yield from once_more_if_lost(ReadRow(user_id))
    if read.row is None or read.clock is None:
        raise TokenNotFoundError(user_id)
    record = core.parse_read(read.row)
    kept = core.kept.get(user_id)
    if read.standby:
        # A standby may lag and its clock is its host's: freshness is judged by the
        # primary's clock as learnt, and a row older than a grant this process holds is
        # read again from the primary (never served as if it were the row).
        db_now = core.db_now()
        if kept is None or verdict(kept, record) is Verdict.IN_ROW:
            return record, db_now
        rows = yield from once_more_if_lost(
            Query(Statement.READ_ROW, {"user_id": user_id}, user_id=user_id)
        )
        if not rows:
            raise TokenNotFoundError(user_id)
        record = core.parse(rows[0])
    else:
        core.db_clock.observe(read.clock)
        db_now = read.clock.db_now
    core.kept.database_answered()  # writes that waited for the database may go now
    if kept is not None and kept.state != "writing":  # (a refresh of ours is writing it)
        found = verdict(kept, record)
        if found is Verdict.WRITE:
            restored = yield from save_kept(
                core, user_id, record.email, core.clock.monotonic(), reason="the row was older"
            )
            record = restored or record
        elif found is Verdict.SUPERSEDED:
            core.kept.forget(user_id, kept.access_token)
        elif kept.state == "unsaved":
            core.kept.saved(user_id, kept.access_token)
    return record, db_now


def get_credentials(core: Core, user_id: str, scopes: Sequence[str] | None) -> Flow[TokenRecord]:
    """The record to hand out: as read when fresh, else refreshed (or still valid)."""
    record, read_at = yield from read_row(core, user_id)
    require_scopes(record, scopes)  # before refreshing: a refresh cannot add a scope
    # A fresh token is served even without an OAuth client; the refresh would need one
    # and checks again under the lock.
    raise_if_unusable(record, core.policy, refreshing=False)
    windows = core.windows
    if windows.plan(record, read_at) is Plan.SERVE:
        return record
    left = record.seconds_left(read_at)
    return (
        yield from refresh_shared(
            core,
            record,
            windows.is_due,
            lock_wait=windows.lock_wait(left),
            follower_wait=windows.follower_wait(left),
            stale_ok=still_valid,
        )
    )


def adopt_or_refresh(core: Core, user_id: str, rejected_token: str | None) -> Flow[TokenRecord]:
    """For handed-out Credentials: a token other than `rejected_token`, refreshed if need be."""
    seen, read_at = yield from read_row(core, user_id)
    raise_if_unusable(seen, core.policy)
    windows = core.windows
    if seen.access_token != rejected_token and not windows.is_due(seen, read_at):
        return seen

    def replace_rejected(record: TokenRecord, now: float) -> bool:
        return record.access_token == rejected_token or windows.is_due(record, now)

    def usable(candidate: TokenRecord, now: float) -> bool:
        return candidate.access_token != rejected_token and still_valid(candidate, now)

    return (
        yield from refresh_shared(
            core,
            seen,
            replace_rejected,
            lock_wait=windows.lock_timeout,
            follower_wait=windows.follower_wait(-1.0),
            stale_ok=usable,
        )
    )


def refresh(
    core: Core, user_id: str, *, force: bool, unless_written_since: str | None
) -> Flow[tuple[TokenRecord, TokenRecord]]:
    """Refresh if due (or always, with `force`); return (the row as seen, as now).

    With `unless_written_since` (a `TokenStatus.version`), refresh only if no writer
    touched the row since that version was read, or it is due anyway: the keepalive's
    compare-and-set, so two runs (or a run and a service) never refresh a row twice.
    A failed refresh raises even while the old token is valid: the caller asked for one.
    """
    seen, read_at = yield from read_row(core, user_id)
    # A broken or refused row is reported even while its token is fresh.
    raise_if_unusable(seen, core.policy, refreshing=False)
    windows = core.windows
    need: Need
    if unless_written_since is not None:

        def need(record: TokenRecord, now: float) -> bool:
            return record.version == unless_written_since or windows.is_due(record, now)

    elif force:
        token_seen = seen.access_token

        def need(record: TokenRecord, now: float) -> bool:
            return record.access_token == token_seen or windows.is_due(record, now)

    else:
        need = windows.is_due
    if not need(seen, read_at):
        return seen, seen
    raise_if_unusable(seen, core.policy)
    record = yield from refresh_shared(
        core,
        seen,
        need,
        lock_wait=windows.lock_timeout,
        follower_wait=windows.follower_wait(-1.0),
        stale_ok=None,
    )
    return seen, record


def keepalive_refresh(
    core: Core, user_id: str, version: str | None
) -> Flow[tuple[TokenRecord, TokenRecord] | None]:
    """The keepalive's refresh: like `refresh(..., unless_written_since=version)`, but a row
    whose lock another transaction holds is left to it (SKIP LOCKED: another run, or a
    service, is refreshing it): None. Several runs at once so share the due rows, and a run
    that dies holds nothing (its transaction ends with its connection)."""
    seen, read_at = yield from read_row(core, user_id)
    raise_if_unusable(seen, core.policy, refreshing=False)
    windows = core.windows
    declined = False  # the row, once locked, was found refreshed by someone else

    def need(record: TokenRecord, now: float) -> bool:
        nonlocal declined
        wanted = record.version == version or windows.is_due(record, now)
        declined = declined or not wanted
        return wanted

    if not need(seen, read_at):
        return seen, seen  # written since it was listed: refreshed by someone else
    raise_if_unusable(seen, core.policy)
    record = yield from refresh_shared(
        core, seen, need, lock_wait=None, follower_wait=None, stale_ok=None
    )
    # `seen` itself comes back only when the lock (or this process's flight) was taken.
    if record is seen:
        return None
    # Another run refreshed it between our read and our lock: still valid, not ours.
    return (record, record) if declined else (seen, record)


def refresh_shared(
    core: Core,
    seen: TokenRecord,
    need: Need,
    *,
    lock_wait: float | None,
    follower_wait: float | None,
    stale_ok: Callable[[TokenRecord, float], bool] | None,
) -> Flow[TokenRecord]:
    """Refresh `seen`'s row, one refresh per user at a time in this process.

    A caller that finds a refresh running waits `follower_wait` seconds for it (None: keeps
    `seen` at once). On a passing failure `seen` is served while `stale_ok(seen, db_now)`.
    """
    uid = seen.user_id
    started = core.clock.monotonic()
    failure: RefreshFailedError
    for _ in range(3):  # a waiter whose leader's result does not suit it goes again
        record: TokenRecord | None
        try:
            record, led = yield from Shared(
                uid, lambda: locked_refresh(core, seen, need, lock_wait), wait=follower_wait
            )
        except LeaderInterrupted:
            continue
        except FlightTimeout:
            failure = RefreshFailedError(
                uid, seen.email, "another thread's refresh took too long", cause="busy"
            )
            break
        except RefreshFailedError as exc:
            failure = exc
            break
        if record is None:  # someone in this process is refreshing; ours is still valid
            return seen
        if led or lock_wait is None or not need(record, core.db_now()):
            return record
    else:
        failure = RefreshFailedError(
            uid, seen.email, "the row kept changing while we waited", cause="busy"
        )
    now = core.db_now()
    if stale_ok is None or not stale_ok(seen, now):
        raise failure
    yield from Emit(
        "served_stale",
        uid,
        seen.email,
        started,
        error=failure.cause,
        level=logging.WARNING,
        message=f"serving the still-valid Gmail token of {describe_user(uid, seen.email)} "
        f"({seen.seconds_left(now):.0f} s left) because the refresh failed: {failure}",
    )
    return seen


def flush_kept(core: Core) -> Flow[None]:
    """Write every unsaved kept grant the row does not hold yet.

    After a write failed because the database did not answer, not again before the next
    read succeeds or `kept.FLUSH_INTERVAL` has passed: callers do not each wait for a dead
    database twice.
    """
    now = core.clock.monotonic()
    if not core.kept.flush_due(now):
        return
    for kept in core.kept.unsaved():
        yield from save_kept(core, kept.user_id, None, now, reason="kept earlier")


def require_scopes(record: TokenRecord, scopes: Sequence[str] | None) -> None:
    if scopes is None:
        return
    granted = set(record.scopes or ())
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise InsufficientScopesError(record.user_id, record.email, missing)


# --- health -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checked:
    """A row's status, and what it was decided from: the record, and the database's local
    time zone offset (LOCALTIMESTAMP minus the clock), so that it can be decided again later
    from the same record (`TokenStore.check(max_age=...)`)."""

    status: TokenStatus
    record: TokenRecord | None
    local_offset: float = 0.0


def _checked(core: Core, row: Sequence[Any]) -> Checked:
    db_clock: float = row[-2]
    db_local_now: float = row[-1]
    record = core.parse(row)
    status = classify(
        record,
        db_now=db_clock,
        db_local_now=db_local_now,
        windows=core.windows,
        policy=core.policy,
    )
    return Checked(status, record, db_local_now - db_clock)


def check(core: Core, user_id: str) -> Flow[Checked]:
    """The health of one grant; never raises for a row that exists."""
    rows = yield from once_more_if_lost(
        Query(Statement.CHECK_ROW, {"user_id": user_id}, user_id=user_id)
    )
    return _checked(core, rows[0]) if rows else Checked(not_found(user_id), None)


def recheck(core: Core, checked: Checked) -> TokenStatus:
    """Decide a checked row's status again, now, from the record it was read as."""
    if checked.record is None:
        return checked.status
    now = core.db_now()
    return classify(
        checked.record,
        db_now=now,
        db_local_now=now + checked.local_offset,
        windows=core.windows,
        policy=core.policy,
    )


# --- writing a grant ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewGrant:
    """A grant to store (from a consent or an import): the Credentials' values, plainly."""

    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    token_uri: str | None
    scopes: Sequence[str] | None
    expiry: datetime | None


def save(
    core: Core,
    user_id: str,
    grant: NewGrant,
    *,
    email: str | None,
    robeing_id: str | None,
    metadata: Mapping[str, Any] | None,
    accept: Callable[[TokenRecord | None], None] | None = None,
) -> Flow[TokenRecord]:
    """Insert or replace the user's grant under the row lock (if the row exists).

    `accept`, when given, sees the row as it is under the lock (None: no row yet) and
    raises to refuse: then the transaction is rolled back and nothing is written (a
    consent checks there that the row is still the account it was for). A row that does
    not exist cannot be locked: then the grant is inserted only if no other writer's row
    appeared meanwhile, and otherwise `accept` sees that row, under its lock.
    """
    if grant.token_uri and (refusal := core.policy.refusal(grant.token_uri)):
        raise InvalidTokenRecordError(user_id, email, refusal)
    lock = LockRow(
        user_id,
        wait_ms=int(core.windows.lock_timeout * 1000),
        idle_timeout_ms=int(core.windows.idle_in_transaction_timeout * 1000),
        purpose="save",
    )
    rows: list[Row] = []
    for _look in range(2):  # a second look only when a first save raced ours
        try:
            locked = yield from once_more_if_lost(lock)
        except LockWaitTimeout:
            raise DatabaseUnavailableError(
                f"the row of user {user_id} stayed locked by another process for "
                f"{core.windows.lock_timeout:g} s; retry later"
            ) from None
        existing = core.parse(locked.row) if locked.row is not None else None
        if accept is not None:
            accept(existing)
        if existing is not None and existing.missing_key is not None and not grant.refresh_token:
            # The row's refresh token is sealed with a key this store lacks: keep it,
            # unwritten (the shell rolls the transaction back, as for a refused `accept`).
            raise MissingKeyError(user_id, existing.email, existing.missing_key)
        values = grant_columns(
            user_id=user_id,
            sealer=core.sealer,
            existing=existing,
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            client_id=grant.client_id,
            client_secret=grant.client_secret,
            token_uri=grant.token_uri,
            scopes=grant.scopes,
            expiry=grant.expiry,
            email=email,
            metadata=metadata,
        )
        first = existing is None and accept is not None
        rows = yield from Execute(
            Statement.INSERT_GRANT if first else Statement.UPSERT_GRANT,
            {
                "user_id": user_id,
                "robeing_id": robeing_id,
                "token_data": to_json(values.token_data),
                "oauth_config": optional_json(values.oauth_config),
                "scopes": optional_json(values.scopes),
                "metadata": to_json(values.metadata),
                "expiry": values.expiry,
            },
            user_id=user_id,
            commit=True,
        )
        if rows:
            break
    else:
        raise DatabaseUnavailableError(
            f"the row of user {user_id} was created and removed while the grant was saved; retry"
        )
    record = core.parse(rows[0])
    # A new consent supersedes anything this process kept for the user.
    core.kept.forget(user_id)
    yield from Forget(user_id)
    yield from Log(
        logging.INFO,
        f"saved the Gmail grant of {describe_user(record.user_id, record.email)}, token "
        f"expires {record.expiry}",
    )
    return record


def find_row(core: Core, user_id: str) -> Flow[TokenRecord | None]:
    """The user's row as it is, or None; never raises for its content (a consent reads the
    account a broken or dead grant was for)."""
    rows = yield from once_more_if_lost(
        Query(Statement.READ_ROW, {"user_id": user_id}, user_id=user_id)
    )
    return core.parse(rows[0]) if rows else None


def create_table() -> Flow[bool]:
    """Create gmail_token if it does not exist; True when it was created."""
    rows = yield from Query(Statement.TABLE_EXISTS)
    if rows and rows[0][0]:
        return False
    yield from Query(Statement.CREATE_TABLE)
    return True
