"""AsyncTokenStore: the asyncio shell. The same flows as TokenStore, performed with awaits.

psycopg's AsyncConnection for the database, httpx's AsyncClient for the token endpoint: a
refresh never blocks the event loop and never takes a thread. Everything the store decides
is in `_flows` / `_refresh_flow`, shared with the sync store; this class only performs
effects (`_effects`) and hands out Credentials.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack

import httpx
import psycopg
from google.oauth2.credentials import Credentials
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from . import _flows, _fork
from ._async_handout import AsyncRefresher
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
from ._flight import AsyncSingleFlight
from ._handout import hand_out
from ._keepalive import KeepaliveReport, refresh_all_async
from ._options import StoreOptions, conninfo_from, dsn_from_env, options_from_env, settings_from
from ._pool_async import AsyncConnection, AsyncPool, AsyncPoolAdapter
from ._record import TokenRecord
from ._results import RefreshResult, TokenStatus
from ._sql import EXPIRY_COLUMN, READ_ROW
from ._store_common import check_save_input, refresh_result, timestamptz_column
from ._user_id import parse_user_id
from .exceptions import TokenStoreError

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_ROLLBACK_OK = frozenset(
    {psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR}
)


class _LoopResources:
    """What the store uses inside one event loop: its HTTP client and single flight.

    The HTTP client keeps no idle connections: a kept-alive socket belongs to the loop that
    opened it, and a store may outlive a loop (a new asyncio.run, a forked worker).
    """

    def __init__(self, max_connections: int) -> None:
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
            follow_redirects=False,
        )
        self.flights: AsyncSingleFlight[Any] = AsyncSingleFlight()


class _Transaction:
    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None
        self.pool: AsyncPool | AsyncPoolAdapter | None = None


class AsyncTokenStore:
    """TokenStore for asyncio services: the same options, methods and semantics, with the
    I/O methods as coroutines. Use as `async with AsyncTokenStore(dsn) as store:`.

    Args:
        conninfo: a libpq URL or key=value DSN, or a `psycopg_pool.AsyncConnectionPool`
            the service owns (opened, with `kwargs={"autocommit": True}`).
        **options: see `StoreOptions`.
    """

    def __init__(
        self, conninfo: str | AsyncConnectionPool[Any], /, **options: Unpack[StoreOptions]
    ) -> None:
        self._settings = settings = settings_from(options)
        self._external_pool = conninfo if isinstance(conninfo, AsyncConnectionPool) else None
        self._conninfo = None if self._external_pool is not None else conninfo_from(conninfo)
        self._core = Core(settings)
        self._cache = (
            CredentialsCache(ttl=settings.cache_ttl, max_entries=settings.cache_size)
            if settings.cache_ttl
            else None
        )
        self._prepare: bool | None = False if settings.prepare_threshold is None else None
        self._pool: AsyncPool | AsyncPoolAdapter | None = None
        self._pid = os.getpid()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._handlers: dict[type, Callable[[Any, _Transaction], Any]] = {
            ReadRow: self._read_row,
            Query: self._query,
            LockRow: self._lock_row,
            Execute: self._execute,
            Commit: self._commit,
            PostForm: self._post_form,
            ReadClock: _read_clock,
            Sleep: lambda effect, _tx: asyncio.sleep(effect.seconds),
            Emit: self._emit,
            Log: _log,
            Forget: self._forget,
            Shared: self._shared,
        }
        self._refresher = AsyncRefresher(self._adopt_or_refresh, settings.windows)
        _fork.register(self._after_fork_in_child)

    @classmethod
    def from_env(cls, dsn: str | None = None, **options: Unpack[StoreOptions]) -> AsyncTokenStore:
        """As `TokenStore.from_env`."""
        return cls(dsn_from_env(dsn), **options_from_env(options))

    # --- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write kept grants if the database answers, then close the store's connections."""
        if self._closed:
            return
        if self._core.kept.pending_count and self._pool is not None:
            self._core.next_flush = 0.0
            await self._flush_kept()
        self._closed = True
        for user in self._core.kept.pending():
            logger.error(
                "the refreshed Gmail grant of user %s was never saved (the database did not "
                "answer) and is lost with this store; the user may have to re-authorize",
                user.user_id,
            )
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            await pool.close()
        for resources in list(self._loops.values()):
            await resources.http.aclose()
        self._loops.clear()
        if self._cache is not None:
            self._cache.clear()

    async def __aenter__(self) -> AsyncTokenStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<AsyncTokenStore refresh_margin={self._settings.refresh_margin} "
            f"cache={'on' if self._cache else 'off'}{' closed' if self._closed else ''}>"
        )

    @property
    def refresh_margin(self) -> float:
        return self._settings.refresh_margin

    def _after_fork_in_child(self) -> None:
        _fork.inherit((self._pool, dict(self._loops)))
        self._pool = None
        self._pid = os.getpid()
        self._loops = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._core.after_fork()
        self._refresher.after_fork()
        if self._cache is not None:
            self._cache.after_fork()

    def _io(self) -> tuple[AsyncPool | AsyncPoolAdapter, _LoopResources]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise TokenStoreError("this AsyncTokenStore is closed")
            if self._pid != os.getpid():
                self._after_fork_in_child()  # forked without Python's at-fork hooks
            pool = self._pool
            if pool is None:
                pool = self._pool = self._open_pool()
            resources = self._loops.get(loop)
            if resources is None:
                resources = self._loops[loop] = _LoopResources(self._settings.max_connections)
        return pool, resources

    def _open_pool(self) -> AsyncPool | AsyncPoolAdapter:
        settings = self._settings
        if self._external_pool is not None:
            return AsyncPoolAdapter(self._external_pool, connect_timeout=settings.connect_timeout)
        assert self._conninfo is not None  # noqa: S101
        return AsyncPool(
            self._conninfo,
            max_size=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            prepare_threshold=settings.prepare_threshold,
        )

    # --- public operations (see TokenStore for the documentation) -------------------------

    async def get_credentials(
        self, user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
    ) -> Credentials:
        """As `TokenStore.get_credentials`; never blocks the event loop."""
        if isinstance(scopes, str):
            raise ValueError("scopes must be a list of scope URLs, not a single string")
        cache = self._cache
        if cache is not None and type(user_id) is str:
            entry = cache.get(user_id, time.monotonic())
            if entry is not None and entry.covers(scopes):
                return entry.credentials
        uid = parse_user_id(user_id)
        if cache is not None:
            entry = cache.get(uid, time.monotonic())
            if entry is not None and entry.covers(scopes):
                return entry.credentials
        return self._remember(await self._run(_flows.get_credentials(self._core, uid, scopes)))

    async def refresh(
        self,
        user_id: str | uuid.UUID,
        *,
        force: bool = False,
        unless_written_since: str | None = None,
    ) -> RefreshResult:
        """As `TokenStore.refresh`."""
        uid = parse_user_id(user_id)
        seen, record = await self._run(
            _flows.refresh(self._core, uid, force=force, unless_written_since=unless_written_since)
        )
        return refresh_result(self._core, seen, record, self._remember(record), time.time())

    async def check(self, user_id: str | uuid.UUID) -> TokenStatus:
        """As `TokenStore.check`."""
        return await self._run(_flows.check(self._core, parse_user_id(user_id)))

    async def check_all(self) -> list[TokenStatus]:
        """As `TokenStore.check_all`."""
        return await self._run(_flows.check_all(self._core))

    async def refresh_all(
        self, *, within: float | None = None, idle_days: float = 30.0, concurrency: int = 4
    ) -> KeepaliveReport:
        """As `TokenStore.refresh_all`, with `concurrency` refreshes in flight at once."""
        return await refresh_all_async(
            self,
            within=self.refresh_margin if within is None else within,
            idle_days=idle_days,
            concurrency=concurrency,
        )

    async def save(
        self,
        user_id: str | uuid.UUID,
        credentials: Credentials,
        *,
        email: str | None = None,
        robeing_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """As `TokenStore.save`."""
        uid = parse_user_id(user_id)
        check_save_input(credentials, robeing_id, metadata)
        await self._run(
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
        """As `TokenStore.token_uri_problem`."""
        return self._core.policy.refusal(token_uri)

    async def create_table(self) -> bool:
        """As `TokenStore.create_table`."""
        return await self._run(_flows.create_table())

    # --- driving flows -------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        if self._closed:
            raise TokenStoreError("this AsyncTokenStore is closed")
        try:
            result = await self._drive(flow)
        except psycopg.Error as exc:  # a safety net: the handlers map what they run
            raise database_error(exc) from exc
        if self._core.kept.pending_count:
            await self._flush_kept()
        return result

    async def _flush_kept(self) -> None:
        try:
            await self._drive(_flows.flush_kept(self._core))
        except (TokenStoreError, psycopg.Error) as exc:
            logger.warning("could not write kept grants yet: %s", exc)

    async def _drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_effects`)."""
        tx = _Transaction()
        handlers = self._handlers
        try:
            effect = flow.send(None)
            while True:
                try:
                    result = await handlers[type(effect)](effect, tx)
                except BaseException as exc:
                    effect = flow.throw(exc)
                else:
                    effect = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            if tx.conn is not None:
                await self._end_abandoned(tx)

    def _remember(self, record: TokenRecord) -> Credentials:
        core = self._core
        refresher = self._refresher.bound_to(asyncio.get_running_loop())
        credentials = hand_out(record, refresher, core.handout_windows, core.clock)
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

    async def _adopt_or_refresh(self, user_id: str, rejected_token: str | None) -> TokenRecord:
        record = await self._run(_flows.adopt_or_refresh(self._core, user_id, rejected_token))
        self._remember(record)
        return record

    # --- effects: the database -------------------------------------------------------------

    async def _read_row(self, effect: ReadRow, _tx: _Transaction) -> RowRead:
        pool, _ = self._io()
        conn = await pool.getconn()
        try:
            sent = time.time()
            cursor = await conn.execute(READ_ROW.text, (effect.user_id,), prepare=self._prepare)
            row = await cursor.fetchone()
            received = time.time()
            expect_user(row, effect.user_id)
            if conn.info.transaction_status is not _IDLE:
                await conn.commit()  # a pool handed to us may not be autocommit
        except BaseException as exc:
            await pool.discard(conn)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, READ_ROW.privilege) from exc
            raise
        await pool.putconn(conn)
        clock = ClockSample(row[-1], sent, received) if row is not None else None
        return RowRead(row, clock)

    async def _query(self, effect: Query, _tx: _Transaction) -> list[tuple[Any, ...]]:
        pool, _ = self._io()
        conn = await pool.getconn()
        try:
            cursor = await conn.execute(effect.statement.text, effect.params, prepare=self._prepare)
            rows = await cursor.fetchall() if cursor.description is not None else []
            for row in rows:
                expect_user(row, effect.user_id)
            if conn.info.transaction_status is not _IDLE:
                await conn.commit()
        except BaseException as exc:
            await pool.discard(conn)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.statement.privilege) from exc
            raise
        await pool.putconn(conn)
        return rows

    async def _lock_row(self, effect: LockRow, tx: _Transaction) -> RowRead:
        pool, _ = self._io()
        tx.pool = pool
        conn = tx.conn = await pool.getconn()
        try:
            statement = (
                sql.SQL("BEGIN; ") + effect.statement if conn.autocommit else effect.statement
            )
            sent = time.time()
            cursor = await conn.execute(statement, prepare=False)
            while cursor.nextset():
                pass
            row = await cursor.fetchone()
            received = time.time()
            expect_user(row, effect.user_id)
            has_tz = timestamptz_column(cursor.description, EXPIRY_COLUMN)
        except BaseException as exc:
            await self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.privilege) from exc
            raise
        clock = ClockSample(row[-1], sent, received) if row is not None else None
        return RowRead(row, clock, has_tz)

    async def _execute(self, effect: Execute, tx: _Transaction) -> list[tuple[Any, ...]]:
        conn = tx.conn
        assert conn is not None  # noqa: S101 - the flow locked the row first
        try:
            cursor = await conn.execute(effect.statement.text, effect.params, prepare=self._prepare)
            rows = await cursor.fetchall() if cursor.description is not None else []
            for row in rows:
                expect_user(row, effect.user_id)
        except BaseException as exc:
            await self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc, effect.statement.privilege) from exc
            raise
        return rows

    async def _commit(self, _effect: Commit, tx: _Transaction) -> None:
        conn, pool = tx.conn, tx.pool
        assert conn is not None  # noqa: S101 - the flow locked the row first
        assert pool is not None  # noqa: S101
        try:
            await conn.commit()
        except BaseException as exc:
            await self._end_abandoned(tx)
            if isinstance(exc, psycopg.Error):
                raise database_error(exc) from exc
            raise
        tx.conn = None
        await pool.putconn(conn)

    async def _end_abandoned(self, tx: _Transaction) -> None:
        """As `TokenStore._end_abandoned`: roll back, or discard a connection that is
        mid-query (a cancelled call) or broken, which ends its session and lock."""
        conn, tx.conn = tx.conn, None
        pool = tx.pool
        if conn is None or pool is None:
            return
        if not conn.broken and conn.info.transaction_status in _ROLLBACK_OK:
            try:
                await conn.rollback()
            except (psycopg.Error, asyncio.CancelledError):
                await pool.discard(conn)
                return
            await pool.putconn(conn)
            return
        await pool.discard(conn)

    # --- effects: everything else ----------------------------------------------------------

    async def _post_form(self, effect: PostForm, _tx: _Transaction) -> HttpAnswer:
        _, resources = self._io()
        try:
            async with (
                asyncio.timeout(effect.timeout),
                resources.http.stream("POST", effect.url, data=effect.form) as response,
            ):
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > effect.max_bytes:
                        break
                return HttpAnswer(response.status_code, bytes(body))
        except Exception as exc:  # TimeoutError from asyncio.timeout included
            raise unreachable(exc) from None

    async def _emit(self, effect: Emit, _tx: _Transaction) -> None:
        announce(effect, self._settings.on_event, time.monotonic())

    async def _forget(self, effect: Forget, _tx: _Transaction) -> None:
        if self._cache is not None:
            self._cache.invalidate(effect.user_id)

    async def _shared(self, effect: Shared, _tx: _Transaction) -> tuple[Any, bool]:
        _, resources = self._io()
        return await resources.flights.run(
            effect.key, lambda: self._drive(effect.flow()), wait=effect.wait
        )


async def _read_clock(_effect: ReadClock, _tx: _Transaction) -> LocalClock:
    return LocalClock(time.time(), time.monotonic())


async def _log(effect: Log, _tx: _Transaction) -> None:
    logger.log(effect.level, "%s", effect.message)
