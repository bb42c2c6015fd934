"""The I/O an AsyncTokenStore performs for the core's effects, with awaits.

The twin of `_sync_io`: psycopg's AsyncConnection for the database, httpx's AsyncClient
for the token endpoint, asyncio for sleeping and single flight. A refresh never blocks the
event loop and takes no thread.

The pool's connections are not tied to an event loop (psycopg waits on a socket in
whichever loop drives it); the HTTP client and the single flight are, so each loop the
store is used from gets its own. After a fork, the child opens everything anew.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from . import _fork
from ._cache import CredentialsCache
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
from ._options import Conninfo, Settings
from ._pool_async import AsyncConnection, AsyncPool, AsyncPoolAdapter
from ._sql import EXPIRY_COLUMN, READ_ROW
from ._store_common import timestamptz_column
from .exceptions import TokenStoreError

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"
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


class Transaction:
    """The connection a flow's transaction runs on, between LockRow and Commit."""

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None
        self.pool: AsyncPool | AsyncPoolAdapter | None = None


class AsyncIO:
    """Performs effects for one AsyncTokenStore (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        conninfo: Conninfo | AsyncConnectionPool[Any],
        cache: CredentialsCache | None,
    ) -> None:
        self._settings = settings
        self._conninfo = conninfo
        self._cache = cache
        self._prepare: bool | None = False if settings.prepare_threshold is None else None
        self._pool: AsyncPool | AsyncPoolAdapter | None = None
        self._pid = os.getpid()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._current: (
            tuple[asyncio.AbstractEventLoop, AsyncPool | AsyncPoolAdapter, _LoopResources] | None
        ) = None
        self.closed = False
        self._handlers: dict[type, Callable[[Any, Transaction], Any]] = {
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

    async def drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_effects`)."""
        tx = Transaction()
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

    @property
    def opened(self) -> bool:
        return self._pool is not None and self._pid == os.getpid()

    async def close(self) -> None:
        self.closed = True
        self._current = None
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            await pool.close()
        for resources in list(self._loops.values()):
            await resources.http.aclose()
        self._loops.clear()

    def after_fork(self) -> None:
        """In a child: forget the parent's resources without touching them (see `_fork`)."""
        _fork.inherit((self._pool, dict(self._loops)))
        self._pool = None
        self._current = None
        self._pid = os.getpid()
        self._loops = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _open(self) -> tuple[AsyncPool | AsyncPoolAdapter, _LoopResources]:
        """The pool, and the HTTP client and single flight of the running loop."""
        loop = asyncio.get_running_loop()
        current = self._current
        if current is not None and current[0] is loop and self._pid == os.getpid():
            return current[1], current[2]
        with self._lock:
            if self.closed:
                raise TokenStoreError("this AsyncTokenStore is closed")
            if self._pid != os.getpid():  # forked without Python's at-fork hooks
                _fork.inherit((self._pool, dict(self._loops)))
                self._pool, self._pid = None, os.getpid()
                self._loops = weakref.WeakKeyDictionary()
            pool = self._pool
            if pool is None:
                pool = self._pool = self._new_pool()
            resources = self._loops.get(loop)
            if resources is None:
                resources = self._loops[loop] = _LoopResources(self._settings.max_connections)
            # The loop is referenced weakly everywhere else; this one is dropped with it
            # when another loop takes its place.
            self._current = (loop, pool, resources)
        return pool, resources

    def _new_pool(self) -> AsyncPool | AsyncPoolAdapter:
        settings = self._settings
        if isinstance(self._conninfo, AsyncConnectionPool):
            return AsyncPoolAdapter(self._conninfo, connect_timeout=settings.connect_timeout)
        return AsyncPool(
            self._conninfo,
            max_size=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            prepare_threshold=settings.prepare_threshold,
        )

    # --- effects: the database -------------------------------------------------------------

    async def _read_row(self, effect: ReadRow, _tx: Transaction) -> RowRead:
        pool, _ = self._open()
        conn = await pool.getconn()
        try:
            sent = time.time()
            cursor = _hot_cursor(conn)
            await cursor.execute(READ_ROW.text, (effect.user_id,), prepare=self._prepare)
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

    async def _query(self, effect: Query, _tx: Transaction) -> list[tuple[Any, ...]]:
        pool, _ = self._open()
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

    async def _lock_row(self, effect: LockRow, tx: Transaction) -> RowRead:
        pool, _ = self._open()
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

    async def _execute(self, effect: Execute, tx: Transaction) -> list[tuple[Any, ...]]:
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

    async def _commit(self, _effect: Commit, tx: Transaction) -> None:
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

    async def _end_abandoned(self, tx: Transaction) -> None:
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

    async def _post_form(self, effect: PostForm, _tx: Transaction) -> HttpAnswer:
        _, resources = self._open()
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

    async def _emit(self, effect: Emit, _tx: Transaction) -> None:
        announce(effect, self._settings.on_event, time.monotonic())

    async def _forget(self, effect: Forget, _tx: Transaction) -> None:
        if self._cache is not None:
            self._cache.invalidate(effect.user_id)

    async def _shared(self, effect: Shared, _tx: Transaction) -> tuple[Any, bool]:
        _, resources = self._open()
        return await resources.flights.run(
            effect.key, lambda: self.drive(effect.flow()), wait=effect.wait
        )


async def _read_clock(_effect: ReadClock, _tx: Transaction) -> LocalClock:
    return LocalClock(time.time(), time.monotonic())


async def _log(effect: Log, _tx: Transaction) -> None:
    logger.log(effect.level, "%s", effect.message)


def _hot_cursor(conn: AsyncConnection) -> psycopg.AsyncCursor[tuple[Any, ...]]:
    """The connection's cursor for the hot path, made once per connection (see the
    `_sync_io` twin: a cursor per call costs a fifth of a loopback round trip)."""
    cursor: psycopg.AsyncCursor[tuple[Any, ...]] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor
