"""TokenStore: the sync shell. It performs the core's effects with psycopg and httpx.

Paths, from the common one down:

* cache hit: a dict lookup and a clock comparison, no I/O;
* hot path: one autocommit `SELECT` by user_id, no lock, no BEGIN/SET/COMMIT;
* refresh path: `_refresh_flow.locked_refresh`, in one transaction under the row lock.

What to do at each step is decided by the flows in `_flows` / `_refresh_flow`; this class
only knows how to perform each effect (`_effects`) and how to hand out Credentials.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack

import httpx
import psycopg
from google.oauth2.credentials import Credentials
from psycopg import sql
from psycopg_pool import ConnectionPool

from . import _flows, _fork
from ._cache import CredentialsCache
from ._core import Core
from ._db_errors import database_error, expect_user
from ._effects import (
    ClockSample,
    Commit,
    Emit,
    Execute,
    Flow,
    Forget,
    HttpAnswer,
    LocalClock,
    LockRow,
    Log,
    PostForm,
    Query,
    ReadClock,
    ReadRow,
    RowRead,
    Shared,
    Sleep,
)
from ._events import announce, logger
from ._exchange import unreachable
from ._flight import SingleFlight
from ._handout import hand_out
from ._keepalive import KeepaliveReport, refresh_all
from ._options import StoreOptions, conninfo_from, dsn_from_env, options_from_env, settings_from
from ._pool import Connection, Pool, PoolAdapter
from ._record import TokenRecord
from ._results import RefreshResult, TokenStatus
from ._sql import EXPIRY_COLUMN, READ_ROW
from ._store_common import check_save_input, refresh_result, timestamptz_column
from ._user_id import parse_user_id
from .exceptions import TokenStoreError

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"


class _Resources:
    """What one process of a store has open: never shared with a forked child."""

    def __init__(self, pool: Pool | PoolAdapter, http: httpx.Client) -> None:
        self.pid = os.getpid()
        self.pool = pool
        self.http = http
        self.flights: SingleFlight[Any] = SingleFlight()


class _Transaction:
    """The connection a flow's transaction runs on, between LockRow and Commit."""

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pool: Pool | PoolAdapter | None = None


class TokenStore:
    """Valid Gmail credentials from the gmail_token table, refreshed at most once at a time.

    Args:
        conninfo: a libpq URL or key=value DSN (the store opens its own connections), or
            a `psycopg_pool.ConnectionPool` the service owns (give it
            `kwargs={"autocommit": True}` for the one-round-trip hot path).
        **options: see `StoreOptions` (refresh_margin, http_timeout, cache_ttl, ...).

    Raises:
        ConfigurationError: an unusable DSN. ValueError: a bad option, naming it.
    """

    def __init__(
        self, conninfo: str | ConnectionPool[Any], /, **options: Unpack[StoreOptions]
    ) -> None:
        self._settings = settings = settings_from(options)
        self._external_pool = conninfo if isinstance(conninfo, ConnectionPool) else None
        self._conninfo = None if self._external_pool is not None else conninfo_from(conninfo)
        self._core = Core(settings)
        self._cache = (
            CredentialsCache(ttl=settings.cache_ttl, max_entries=settings.cache_size)
            if settings.cache_ttl
            else None
        )
        # Per-statement override: with a pool we do not own we cannot set the connection's.
        self._prepare: bool | None = False if settings.prepare_threshold is None else None
        self._resources: _Resources | None = None
        self._open_lock = threading.Lock()
        self._closed = False
        self._handlers: dict[type, Callable[[Any, _Transaction], Any]] = {
            ReadRow: self._read_row,
            Query: self._query,
            LockRow: self._lock_row,
            Execute: self._execute,
            Commit: self._commit,
            PostForm: self._post_form,
            ReadClock: _read_clock,
            Sleep: lambda effect, _tx: time.sleep(effect.seconds),
            Emit: lambda effect, _tx: announce(effect, settings.on_event, time.monotonic()),
            Log: lambda effect, _tx: logger.log(effect.level, "%s", effect.message),
            Forget: self._forget,
            Shared: self._shared,
        }
        _fork.register(self._after_fork_in_child)

    @classmethod
    def from_env(cls, dsn: str | None = None, **options: Unpack[StoreOptions]) -> TokenStore:
        """Build a store from the environment; `dsn` and keyword options override it.

        The DSN comes from `GMAIL_TOKEN_STORE_DSN`, else `DATABASE_URL` (an empty variable
        counts as unset); the fallback OAuth client from `GOOGLE_CLIENT_ID` /
        `GOOGLE_CLIENT_SECRET`.

        Raises:
            ConfigurationError: neither variable names a database.
        """
        return cls(dsn_from_env(dsn), **options_from_env(options))

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Write kept grants if the database answers, then close the store's connections
        and HTTP client (a pool passed in stays open)."""
        if self._closed:
            return
        if self._core.kept.pending_count and self._resources is not None:
            self._core.next_flush = 0.0
            self._flush_kept()
        self._closed = True
        for user in self._core.kept.pending():
            logger.error(
                "the refreshed Gmail grant of user %s was never saved (the database did not "
                "answer) and is lost with this store; the user may have to re-authorize",
                user.user_id,
            )
        resources, self._resources = self._resources, None
        if resources is not None and resources.pid == os.getpid():
            resources.pool.close()
            resources.http.close()
        if self._cache is not None:
            self._cache.clear()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TokenStore refresh_margin={self._settings.refresh_margin} "
            f"cache={'on' if self._cache else 'off'}{' closed' if self._closed else ''}>"
        )

    @property
    def refresh_margin(self) -> float:
        """Seconds before expiry from which a token is refreshed."""
        return self._settings.refresh_margin

    def _after_fork_in_child(self) -> None:
        # See `_fork`: the parent's connections, HTTP client and flights stay untouched.
        _fork.inherit(self._resources)
        self._resources = None
        self._open_lock = threading.Lock()
        self._core.after_fork()
        if self._cache is not None:
            self._cache.after_fork()

    def _io(self) -> _Resources:
        resources = self._resources
        if resources is not None and resources.pid == os.getpid():
            return resources
        with self._open_lock:
            if self._closed:
                raise TokenStoreError("this TokenStore is closed")
            resources = self._resources
            if resources is not None and resources.pid != os.getpid():
                self._after_fork_in_child()  # forked without Python's at-fork hooks
                resources = None
            if resources is None:
                resources = self._resources = self._open()
            return resources

    def _open(self) -> _Resources:
        settings = self._settings
        pool: Pool | PoolAdapter
        if self._external_pool is not None:
            pool = PoolAdapter(self._external_pool, connect_timeout=settings.connect_timeout)
        else:
            assert self._conninfo is not None  # noqa: S101 - one of the two is set
            pool = Pool(
                self._conninfo,
                max_size=settings.max_connections,
                connect_timeout=settings.connect_timeout,
                prepare_threshold=settings.prepare_threshold,
            )
        http = httpx.Client(
            limits=httpx.Limits(max_connections=settings.max_connections),
            follow_redirects=False,
        )
        return _Resources(pool, http)

    # --- public operations ---------------------------------------------------------------

    def get_credentials(
        self, user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
    ) -> Credentials:
        """Return valid Credentials for the user, refreshing them first when they are due.

        The token has at least `refresh_margin` seconds left when the endpoint grants
        that much; inside the advisory window it may be the current, still-valid token
        while another caller refreshes.

        Args:
            user_id: the user's UUID (str or uuid.UUID).
            scopes: scopes the caller needs, e.g. [GMAIL_SEND].

        Raises:
            InvalidUserIdError, TokenNotFoundError, InvalidTokenRecordError,
            ReauthRequiredError, InsufficientScopesError, OAuthClientError,
            RefreshFailedError, DatabaseUnavailableError, ConfigurationError.
        """
        if isinstance(scopes, str):
            raise ValueError("scopes must be a list of scope URLs, not a single string")
        cache = self._cache
        if cache is not None and type(user_id) is str:
            entry = cache.get(user_id, time.monotonic())  # the hit path: no parsing, no I/O
            if entry is not None and entry.covers(scopes):
                return entry.credentials
        uid = parse_user_id(user_id)
        if cache is not None:
            entry = cache.get(uid, time.monotonic())
            if entry is not None and entry.covers(scopes):
                return entry.credentials
        return self._remember(self._run(_flows.get_credentials(self._core, uid, scopes)))

    def refresh(
        self,
        user_id: str | uuid.UUID,
        *,
        force: bool = False,
        unless_written_since: str | None = None,
    ) -> RefreshResult:
        """Refresh the user's token if it is due (or always, with `force`).

        Unlike `get_credentials`, a failed refresh raises even while the old token is
        still valid: the caller asked for a refresh. With `unless_written_since` (a
        `TokenStatus.version` from `check`/`check_all`) the row is refreshed only if
        nobody wrote it since (or it is due anyway): the keepalive's compare-and-set.

        Returns:
            status "valid" (nothing was needed) or "refreshed".
        """
        uid = parse_user_id(user_id)
        seen, record = self._run(
            _flows.refresh(self._core, uid, force=force, unless_written_since=unless_written_since)
        )
        return refresh_result(self._core, seen, record, self._remember(record), time.time())

    def check(self, user_id: str | uuid.UUID) -> TokenStatus:
        """Report the health of the user's grant; never raises for a row that exists.

        Raises:
            InvalidUserIdError, DatabaseUnavailableError, ConfigurationError.
        """
        return self._run(_flows.check(self._core, parse_user_id(user_id)))

    def check_all(self) -> list[TokenStatus]:
        """Report the health of every grant in the table, oldest row first; each carries
        the row's `version` for `refresh(..., unless_written_since=...)`."""
        return self._run(_flows.check_all(self._core))

    def refresh_all(
        self,
        *,
        within: float | None = None,
        idle_days: float = 30.0,
        concurrency: int = 4,
        progress: Callable[[KeepaliveReport], None] | None = None,
    ) -> KeepaliveReport:
        """The keepalive: refresh every grant expiring within `within` seconds (default:
        the refresh margin) or not refreshed for `idle_days`, `concurrency` at a time.

        Each row goes through `refresh(..., unless_written_since=...)`, so a row somebody
        refreshed since the listing is not refreshed again. `progress` is called with the
        report so far every few seconds."""
        return refresh_all(
            self,
            within=self.refresh_margin if within is None else within,
            idle_days=idle_days,
            concurrency=concurrency,
            progress=progress,
        )

    def save(
        self,
        user_id: str | uuid.UUID,
        credentials: Credentials,
        *,
        email: str | None = None,
        robeing_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Insert or replace the user's grant (after a consent or an import).

        Keeps every other metadata key and column, clears any recorded refresh failure.

        Raises:
            InvalidUserIdError; ValueError for credentials without any token or bad
            metadata; InvalidTokenRecordError when the credentials' token_uri is refused.
        """
        uid = parse_user_id(user_id)
        check_save_input(credentials, robeing_id, metadata)
        self._run(
            _flows.save(
                self._core, uid, credentials, email=email, robeing_id=robeing_id, metadata=metadata
            )
        )

    def invalidate(self, user_id: str | uuid.UUID) -> None:
        """Forget the user's cached credentials; the next call reads the row."""
        uid = parse_user_id(user_id)
        if self._cache is not None:
            self._cache.invalidate(uid)

    def token_uri_problem(self, token_uri: str) -> str | None:
        """Why this store would refuse to send a client secret to `token_uri`, or None."""
        return self._core.policy.refusal(token_uri)

    def create_table(self) -> bool:
        """Create gmail_token if it does not exist (never alters it); True if created."""
        return self._run(_flows.create_table())

    # --- driving flows -------------------------------------------------------------------

    def _run(self, flow: Flow[T]) -> T:
        if self._closed:
            raise TokenStoreError("this TokenStore is closed")
        try:
            result = self._drive(flow)
        except psycopg.Error as exc:  # a safety net: the handlers map what they run
            raise database_error(exc) from exc
        if self._core.kept.pending_count:
            self._flush_kept()
        return result

    def _flush_kept(self) -> None:
        try:
            self._drive(_flows.flush_kept(self._core))
        except (TokenStoreError, psycopg.Error) as exc:
            logger.warning("could not write kept grants yet: %s", exc)

    def _drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_effects`)."""
        tx = _Transaction()
        handlers = self._handlers
        try:
            effect = flow.send(None)
            while True:
                try:
                    result = handlers[type(effect)](effect, tx)
                except BaseException as exc:
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            if tx.conn is not None:
                self._end_abandoned(tx)

    def _remember(self, record: TokenRecord) -> Credentials:
        core = self._core
        credentials = hand_out(record, self._refresh_handed_out, core.handout_windows, core.clock)
        if self._cache is not None:
            self._cache.put(
                record.user_id,
                credentials,
                frozenset(record.scopes) if record.scopes is not None else None,
                seconds_left=record.seconds_left(core.clock.db_now(time.time())),
                refresh_margin=self._settings.refresh_margin,
                now=time.monotonic(),
            )
        return credentials

    def _refresh_handed_out(self, user_id: str, rejected_token: str | None) -> TokenRecord:
        record = self._run(_flows.adopt_or_refresh(self._core, user_id, rejected_token))
        self._remember(record)
        return record

    # --- effects: the database -------------------------------------------------------------

    def _read_row(self, effect: ReadRow, _tx: _Transaction) -> RowRead:
        pool = self._io().pool
        conn = pool.getconn()
        try:
            sent = time.time()
            row = (
                _hot_cursor(conn)
                .execute(READ_ROW.text, (effect.user_id,), prepare=self._prepare)
                .fetchone()
            )
            received = time.time()
            expect_user(row, effect.user_id)
            if conn.info.transaction_status is not _IDLE:
                conn.commit()  # a pool handed to us may not be autocommit
        except BaseException as exc:
            pool.discard(conn)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, READ_ROW.privilege) from exc
            raise
        pool.putconn(conn)
        clock = ClockSample(row[-1], sent, received) if row is not None else None
        return RowRead(row, clock)

    def _query(self, effect: Query, _tx: _Transaction) -> list[tuple[Any, ...]]:
        pool = self._io().pool
        conn = pool.getconn()
        try:
            cursor = conn.execute(effect.statement.text, effect.params, prepare=self._prepare)
            rows = cursor.fetchall() if cursor.description is not None else []
            for row in rows:
                expect_user(row, effect.user_id)
            if conn.info.transaction_status is not _IDLE:
                conn.commit()
        except BaseException as exc:
            pool.discard(conn)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.statement.privilege) from exc
            raise
        pool.putconn(conn)
        return rows

    def _lock_row(self, effect: LockRow, tx: _Transaction) -> RowRead:
        pool = tx.pool = self._io().pool
        conn = tx.conn = pool.getconn()
        try:
            # One simple-protocol query: BEGIN (unless psycopg already began one on a
            # connection that is not autocommit), the timeouts, the lock.
            statement = (
                sql.SQL("BEGIN; ") + effect.statement if conn.autocommit else effect.statement
            )
            sent = time.time()
            cursor = conn.execute(statement, prepare=False)
            while cursor.nextset():  # to the SELECT's result
                pass
            row = cursor.fetchone()
            received = time.time()
            expect_user(row, effect.user_id)
            has_tz = timestamptz_column(cursor.description, EXPIRY_COLUMN)
        except BaseException as exc:
            self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.privilege) from exc
            raise
        clock = ClockSample(row[-1], sent, received) if row is not None else None
        return RowRead(row, clock, has_tz)

    def _execute(self, effect: Execute, tx: _Transaction) -> list[tuple[Any, ...]]:
        conn = tx.conn
        assert conn is not None  # noqa: S101 - the flow locked the row first
        try:
            cursor = conn.execute(effect.statement.text, effect.params, prepare=self._prepare)
            rows = cursor.fetchall() if cursor.description is not None else []
            for row in rows:
                expect_user(row, effect.user_id)
        except BaseException as exc:
            self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.statement.privilege) from exc
            raise
        return rows

    def _commit(self, _effect: Commit, tx: _Transaction) -> None:
        conn = tx.conn
        assert conn is not None  # noqa: S101
        try:
            conn.commit()
        except BaseException as exc:
            self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc) from exc
            raise
        tx.conn = None
        assert tx.pool is not None  # noqa: S101
        tx.pool.putconn(conn)

    def _end_abandoned(self, tx: _Transaction) -> None:
        """End a transaction the flow left (it raised): roll back, or discard the
        connection if it is mid-query or broken, which ends the session and its lock."""
        conn, tx.conn = tx.conn, None
        pool = tx.pool
        if conn is None or pool is None:
            return
        if not conn.broken and conn.info.transaction_status in _ROLLBACK_OK:
            try:
                conn.rollback()
            except psycopg.Error:
                pool.discard(conn)
                return
            pool.putconn(conn)
            return
        pool.discard(conn)

    # --- effects: everything else ----------------------------------------------------------

    def _post_form(self, effect: PostForm, _tx: _Transaction) -> HttpAnswer:
        try:
            with self._io().http.stream(
                "POST", effect.url, data=effect.form, timeout=effect.timeout
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > effect.max_bytes:
                        break
                return HttpAnswer(response.status_code, bytes(body))
        except Exception as exc:
            raise unreachable(exc) from None

    def _forget(self, effect: Forget, _tx: _Transaction) -> None:
        if self._cache is not None:
            self._cache.invalidate(effect.user_id)

    def _shared(self, effect: Shared, _tx: _Transaction) -> tuple[Any, bool]:
        return self._io().flights.run(
            effect.key, lambda: self._drive(effect.flow()), wait=effect.wait
        )


_ROLLBACK_OK = frozenset(
    {psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR}
)


def _read_clock(_effect: ReadClock, _tx: _Transaction) -> LocalClock:
    return LocalClock(time.time(), time.monotonic())


def _hot_cursor(conn: Connection) -> psycopg.Cursor[tuple[Any, ...]]:
    """The connection's cursor for the hot path, made once per connection.

    `conn.execute()` builds and discards a cursor per call, which costs about a fifth of
    a loopback round trip. A pooled connection serves one thread at a time, so its cursor
    does too; it is closed with the connection.
    """
    cursor: psycopg.Cursor[tuple[Any, ...]] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor
