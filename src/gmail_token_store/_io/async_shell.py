"""The async shell: performs the core's effects for an AsyncTokenStore, with awaits.

The twin of `sync_shell`, kept line-parallel: psycopg's AsyncConnection for the database,
httpx's AsyncClient for the token endpoint, asyncio for sleeping and single flight. A
refresh never blocks the event loop and takes no thread.

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
from typing import Any, TypeVar, assert_never

import httpx
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .._core.clock import ClockSample
from .._core.effects import (
    Commit,
    DatabaseEffect,
    Effect,
    Emit,
    Execute,
    Flow,
    Forget,
    HttpAnswer,
    LockRow,
    Log,
    PostForm,
    Query,
    ReadRow,
    Row,
    RowRead,
    Shared,
    Sleep,
)
from .._core.errors import TokenStoreError
from .._core.events import EventHook
from . import fork
from .conninfo import Conninfo
from .errors import database_error, expect_user, unreachable
from .events import announce, logger
from .flight import AsyncSingleFlight
from .pool_async import AsyncConnection, AsyncPool, AsyncPoolAdapter
from .sql import EXPIRY_COLUMN, READ_ROW, SQL, lock_row, privilege, timestamptz_column

T = TypeVar("T")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_ROLLBACK_OK = frozenset(
    {psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR}
)
_HOT_CURSOR = "_gmail_token_store_cursor"


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
    """The connection a flow's transaction runs on, from LockRow to its commit."""

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None
        self.pool: AsyncPool | AsyncPoolAdapter | None = None


class AsyncShell:
    """Performs effects for one AsyncTokenStore (see the module docstring)."""

    def __init__(
        self,
        conninfo: Conninfo | AsyncConnectionPool[Any],
        *,
        max_connections: int,
        connect_timeout: float,
        prepare_threshold: int | None,
        on_event: EventHook | None,
        forget: Callable[[str], None],
    ) -> None:
        self._conninfo = conninfo
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._prepare_threshold = prepare_threshold
        # Per-statement override: with a pool we do not own we cannot set the connection's.
        self._prepare: bool | None = False if prepare_threshold is None else None
        self._on_event = on_event
        self._forget = forget
        self._pool: AsyncPool | AsyncPoolAdapter | None = None
        self._pid = os.getpid()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._current: (
            tuple[asyncio.AbstractEventLoop, AsyncPool | AsyncPoolAdapter, _LoopResources] | None
        ) = None
        self._lock = threading.Lock()
        self.closed = False

    async def drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_core.effects`)."""
        tx = Transaction()
        try:
            effect = flow.send(None)
            while True:
                try:
                    result = await self._perform(effect, tx)
                except psycopg.Error as exc:  # the one place a driver error becomes ours
                    effect = flow.throw(database_error(exc, privilege(effect)))
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

    async def _perform(self, effect: Effect, tx: Transaction) -> object:
        result: object = None
        match effect:
            case ReadRow() | Query() | LockRow() | Execute() | Commit():
                result = await self._database(effect, tx)
            case PostForm():
                result = await self._post_form(effect)
            case Sleep():
                await asyncio.sleep(effect.seconds)
            case Emit():
                announce(effect, self._on_event, time.monotonic())
            case Log():
                logger.log(effect.level, "%s", effect.message)
            case Forget():
                self._forget(effect.user_id)
            case Shared():
                result = await self._shared(effect)
            case _:
                assert_never(effect)
        return result

    @property
    def opened(self) -> bool:
        """Has this process opened connections (is there anything to close)?"""
        return self._pool is not None and self._pid == os.getpid()

    async def close(self) -> None:
        """Close this process's connections and HTTP clients (a pool passed in stays open)."""
        self.closed = True
        self._current = None
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            await pool.close()
        for resources in list(self._loops.values()):
            await resources.http.aclose()
        self._loops.clear()

    def after_fork(self) -> None:
        """In a child: forget the parent's resources without touching them (see `fork`)."""
        fork.inherit((self._pool, dict(self._loops)))
        self._pool, self._current, self._pid = None, None, os.getpid()
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
                fork.inherit((self._pool, dict(self._loops)))
                self._pool, self._pid = None, os.getpid()
                self._loops = weakref.WeakKeyDictionary()
            pool = self._pool
            if pool is None:
                pool = self._pool = self._new_pool()
            resources = self._loops.get(loop)
            if resources is None:
                resources = self._loops[loop] = _LoopResources(self._max_connections)
            # The loop is referenced weakly everywhere else; this one is dropped with it
            # when another loop takes its place.
            self._current = (loop, pool, resources)
        return pool, resources

    def _new_pool(self) -> AsyncPool | AsyncPoolAdapter:
        if isinstance(self._conninfo, AsyncConnectionPool):
            return AsyncPoolAdapter(self._conninfo, connect_timeout=self._connect_timeout)
        return AsyncPool(
            self._conninfo,
            max_size=self._max_connections,
            connect_timeout=self._connect_timeout,
            prepare_threshold=self._prepare_threshold,
        )

    # --- the database: every statement, one error mapping, one release ---------------------

    async def _database(self, effect: DatabaseEffect, tx: Transaction) -> object:
        """Run one database effect. A failure ends the connection's part here: an autocommit
        connection is discarded, a transaction rolled back (or its connection discarded,
        which ends the session and its lock); `drive` maps the driver's error."""
        if isinstance(effect, Execute | Commit):
            conn, pool = tx.conn, tx.pool
            assert conn is not None  # noqa: S101 - LockRow came first
            assert pool is not None  # noqa: S101
        else:
            pool, _ = self._open()
            conn = await pool.getconn()
            if isinstance(effect, LockRow):
                tx.conn, tx.pool = conn, pool
        try:
            result = await self._run(conn, effect)
        except BaseException:
            if tx.conn is conn:
                await self._end_abandoned(tx)
            else:
                await pool.discard(conn)
            raise
        if tx.conn is not conn:
            await pool.putconn(conn)
        elif isinstance(effect, Commit) or (isinstance(effect, Execute) and effect.commit):
            tx.conn = None
            await pool.putconn(conn)
        return result

    async def _run(self, conn: AsyncConnection, effect: DatabaseEffect) -> object:
        match effect:
            case ReadRow():
                sent = time.time()
                cursor = _hot_cursor(conn)
                await cursor.execute(
                    READ_ROW.text, {"user_id": effect.user_id}, prepare=self._prepare
                )
                row = await cursor.fetchone()
                received = time.time()
                expect_user(row, effect.user_id)
                if conn.info.transaction_status is not _IDLE:
                    await conn.commit()  # a pool handed to us may not be autocommit
                return RowRead(row, ClockSample(row[-1], sent, received) if row else None)
            case Query():
                rows = await self._rows(conn, effect)
                if conn.info.transaction_status is not _IDLE:
                    await conn.commit()
                return rows
            case LockRow():
                # One simple-protocol query: BEGIN (unless psycopg already began one on a
                # connection that is not autocommit), the timeouts, the lock.
                statement = lock_row(effect.user_id, effect.wait_ms, effect.idle_timeout_ms)
                if conn.autocommit:
                    statement = sql.SQL("BEGIN; ") + statement
                sent = time.time()
                cursor = await conn.execute(statement, prepare=False)
                while cursor.nextset():  # to the SELECT's result
                    pass
                row = await cursor.fetchone()
                received = time.time()
                expect_user(row, effect.user_id)
                has_tz = timestamptz_column(cursor.description, EXPIRY_COLUMN)
                return RowRead(row, ClockSample(row[-1], sent, received) if row else None, has_tz)
            case Execute():
                rows = await self._rows(conn, effect)
                if effect.commit:
                    await conn.commit()
                return rows
            case Commit():
                await conn.commit()
                return None
            case _:
                assert_never(effect)

    async def _rows(self, conn: AsyncConnection, effect: Query | Execute) -> list[Row]:
        cursor = await conn.execute(
            SQL[effect.statement].text, effect.params, prepare=self._prepare
        )
        rows = await cursor.fetchall() if cursor.description is not None else []
        for row in rows:
            expect_user(row, effect.user_id)
        return rows

    async def _end_abandoned(self, tx: Transaction) -> None:
        """End a transaction the flow left (it raised, or was cancelled): roll back, or
        discard the connection if it is mid-query or broken, which ends the session and
        its lock."""
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

    # --- the token endpoint and the single flight ------------------------------------------

    async def _post_form(self, effect: PostForm) -> HttpAnswer:
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

    async def _shared(self, effect: Shared[Any]) -> tuple[Any, bool]:
        _, resources = self._open()
        return await resources.flights.run(
            effect.key, lambda: self.drive(effect.flow()), wait=effect.wait
        )


def _hot_cursor(conn: AsyncConnection) -> psycopg.AsyncCursor[Row]:
    """The connection's cursor for the hot path, made once per connection (see the
    `sync_shell` twin: a cursor per call costs a fifth of a loopback round trip)."""
    cursor: psycopg.AsyncCursor[Row] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor
