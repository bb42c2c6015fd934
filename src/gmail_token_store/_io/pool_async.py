"""The async store's connections: the same small pool as `_pool`, for coroutines.

Connections are opened by the coroutine that needs one (bounded by `connect_timeout`), so
errors come back at once with their cause and recovery after an outage is immediate; see
`_pool` for why psycopg_pool's own AsyncConnectionPool is not used for the store's own
connections. A psycopg AsyncConnection waits on its socket in whichever event loop drives
it, so the pool's connections are not tied to one loop; its state is guarded by a thread
lock held for a few dictionary operations (never across an await).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import deque
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._core.errors import ConfigurationError, DatabaseUnavailableError, TokenStoreError
from .conninfo import Conninfo
from .errors import connect_error, drop_traceback
from .pool_book import PoolBook

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"


class AsyncPool:
    """At most `max_size` autocommit AsyncConnections."""

    def __init__(
        self,
        conninfo: Conninfo,
        *,
        max_size: int,
        connect_timeout: float,
        prepare_threshold: int | None,
    ) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._prepare_threshold = prepare_threshold
        self._lock = threading.Lock()
        self._book: PoolBook[AsyncConnection] = PoolBook(max_size)
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def getconn(self) -> AsyncConnection:
        deadline = time.monotonic() + self._connect_timeout
        while True:
            waiter: asyncio.Future[None] | None = None
            with self._lock:
                if self._book.closed:
                    raise DatabaseUnavailableError("this store is closed")
                conn, grow, stale = self._book.take(time.monotonic())
                if conn is None and not grow:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
            for old in stale:
                await _close_quietly(old)
            if conn is not None:
                return conn
            if waiter is None:
                return await self._connect(deadline)
            await self._wait(waiter, deadline)

    async def _wait(self, waiter: asyncio.Future[None], deadline: float) -> None:
        try:
            await asyncio.wait_for(waiter, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise DatabaseUnavailableError(
                f"all {self._book.max_size} database connections of this store stayed busy "
                f"for {self._connect_timeout:g} s; retry later (or raise max_connections)"
            ) from None
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, deadline: float) -> AsyncConnection:
        timeout = max(deadline - time.monotonic(), 0.0)
        failure: TokenStoreError | None = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo.dsn,
                autocommit=True,
                prepare_threshold=self._prepare_threshold,
                connect_timeout=max(2, math.ceil(timeout)),
            )
        except psycopg.Error as exc:
            failure = connect_error(
                exc, timeout=self._connect_timeout, password=self._conninfo.password
            )
            drop_traceback(exc)
        except BaseException:
            self._abandon_slot()
            raise
        if failure is not None:  # see _pool.Pool._connect
            self._abandon_slot()
            raise failure
        with self._lock:
            self._book.opened(conn, time.monotonic())
        return conn

    def _abandon_slot(self) -> None:
        with self._lock:
            self._book.abandoned()
            self._wake(1)

    async def putconn(self, conn: AsyncConnection) -> None:
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status is _IDLE
        with self._lock:
            kept = self._book.give_back(conn, healthy=healthy, now=time.monotonic())
            self._wake(1)
        if not kept:
            await _close_quietly(conn)

    async def discard(self, conn: AsyncConnection) -> None:
        """Close a failed connection; if it broke, the idle ones too (see PoolBook)."""
        with self._lock:
            closing = self._book.discard(conn, broken=conn.broken or conn.closed)
            self._wake(len(closing))  # every slot freed may serve one waiter
        for each in closing:
            await _close_quietly(each)

    def _wake(self, count: int) -> None:
        """Wake up to `count` waiters (each may take one connection or one free slot)."""
        while self._waiters and count > 0:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.get_loop().call_soon_threadsafe(_set_if_pending, waiter)
                count -= 1

    async def close(self) -> None:
        with self._lock:
            idle = self._book.close()
            waiters, self._waiters = list(self._waiters), deque()
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_set_if_pending, waiter)
        for conn in idle:
            await _close_quietly(conn)


def _set_if_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _close_quietly(conn: AsyncConnection) -> None:
    # Closing a dead connection may fail; it is gone either way.
    with contextlib.suppress(Exception):
        await conn.close()


class AsyncPoolAdapter:
    """A psycopg_pool.AsyncConnectionPool the service owns (see `_pool.PoolAdapter`)."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, connect_timeout: float) -> None:
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._pid = os.getpid()

    async def getconn(self) -> AsyncConnection:
        if os.getpid() != self._pid:
            raise ConfigurationError(
                "the psycopg_pool pool given to this store was opened before os.fork(); "
                "open the pool (and the store) in each worker process after the fork"
            )
        try:
            conn: AsyncConnection = await self._pool.getconn(timeout=self._connect_timeout)
        except PoolTimeout:
            pass
        else:
            return conn
        # (raised outside the except: the pool's error is not its context)
        raise DatabaseUnavailableError(
            f"no database connection from the service's pool within "
            f"{self._connect_timeout:g} s; retry later"
        )

    async def putconn(self, conn: AsyncConnection) -> None:
        await self._pool.putconn(conn)

    async def discard(self, conn: AsyncConnection) -> None:
        await _close_quietly(conn)
        await self._pool.putconn(conn)
        if conn.broken:
            await self._pool.check()

    async def close(self) -> None:
        """The service owns the pool: nothing to do."""


def hot_cursor(conn: AsyncConnection) -> psycopg.AsyncCursor[tuple[Any, ...]]:
    """The connection's cursor for the hot path, made once per connection.

    `conn.execute()` builds and discards a cursor per call, which costs about a fifth of
    a loopback round trip. A pooled connection serves one caller at a time, so its cursor
    does too; it is closed with the connection.
    """
    cursor: psycopg.AsyncCursor[tuple[Any, ...]] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor
