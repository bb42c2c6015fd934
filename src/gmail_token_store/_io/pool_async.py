"""The async store's connections: the same small pool as `_pool`, for coroutines.

Connections are opened by the coroutine that needs one (bounded by `connect_timeout`), so
errors come back at once with their cause and recovery after an outage is immediate; see
`_pool` for why psycopg_pool's own AsyncConnectionPool is not used for the store's own
connections. A psycopg AsyncConnection waits on its socket in whichever event loop drives
it, so the pool's connections are not tied to one loop; its state is guarded by a thread
lock held for a few list operations (never across an await), and a waiter is woken in its
own loop (`_Waiter.wake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._core.errors import ConfigurationError, DatabaseUnavailableError, TokenStoreError
from .conninfo import Conninfo
from .errors import connect_error, drop_traceback
from .pool_book import PoolBook, Slot, Waiter

AsyncConnection = psycopg.AsyncConnection[tuple[Any, ...]]
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"


class AsyncPool:
    """At most `max_size` autocommit AsyncConnections, first come first served."""

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
        self._clock = time.monotonic
        self._lock = threading.Lock()
        self._book: PoolBook[AsyncConnection] = PoolBook(max_size)

    async def getconn(self) -> AsyncConnection:
        """An idle connection, or a new one; waits its turn at most `connect_timeout`.

        Raises:
            DatabaseUnavailableError, ConfigurationError: see `_db_errors.connect_error`.
        """
        deadline = self._clock() + self._connect_timeout
        with self._lock:
            if self._book.closed:
                raise DatabaseUnavailableError("this store is closed")
            grant, stale = self._book.take(self._clock())
            if grant is None:  # others wait, or nothing is free: in line
                waiter = _Waiter(asyncio.get_running_loop())
                self._book.wait(waiter)
        if grant is None:
            grant = await self._wait(waiter, deadline)
        elif stale:
            try:
                await _close_all(stale)
            except BaseException:
                await self._give_up(grant)
                raise
        return await self._connect(deadline) if grant is Slot.FREE else grant

    async def _wait(self, waiter: _Waiter, deadline: float) -> AsyncConnection | Slot:
        """Wait for a connection or a slot handed over in turn (`PoolBook.hand_over`)."""
        try:
            async with asyncio.timeout(max(deadline - self._clock(), 0.0)):
                await waiter.woken
        except TimeoutError:
            pass
        except BaseException:  # cancelled: what came meanwhile goes to the next waiter
            with self._lock:
                given = self._book.withdraw(waiter)
            if given is not None:
                await self._give_up(given)
            raise
        with self._lock:  # (handed over at the deadline: taken, not lost)
            given = self._book.withdraw(waiter)
            if given is None and self._book.closed:
                raise DatabaseUnavailableError("this store is closed")
        if given is None:
            raise DatabaseUnavailableError(
                f"all {self._book.max_size} database connections of this store stayed busy "
                f"for {self._connect_timeout:g} s; retry later (or raise max_connections)"
            )
        return given

    async def _give_up(self, given: AsyncConnection | Slot) -> None:
        """Pass on what was granted to a caller that will not use it."""
        if given is Slot.FREE:
            await self._abandon_slot()
        else:
            await self.putconn(given)

    async def _connect(self, deadline: float) -> AsyncConnection:
        timeout = max(deadline - self._clock(), 0.0)
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
            await self._abandon_slot()
            raise
        if failure is not None:  # see _pool.Pool._connect
            await self._abandon_slot()
            raise failure
        with self._lock:
            self._book.opened(conn, self._clock())
        return conn

    async def _abandon_slot(self) -> None:
        with self._lock:
            self._book.abandoned()
            stale = self._hand_over()
        await _close_all(stale)

    async def putconn(self, conn: AsyncConnection) -> None:
        """Give a connection back: to the first waiter, or kept idle if it is healthy and
        idle; closed otherwise."""
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status is _IDLE
        with self._lock:
            kept = self._book.give_back(conn, healthy=healthy, now=self._clock())
            stale = self._hand_over()
        await _close_all(stale if kept else [conn, *stale])

    async def discard(self, conn: AsyncConnection) -> None:
        """Close a connection that failed (and the idle ones, if it broke: see PoolBook)."""
        with self._lock:
            closing = self._book.discard(conn, broken=conn.broken or conn.closed)
            closing += self._hand_over()  # every slot freed may serve one waiter
        await _close_all(closing)

    def _hand_over(self) -> list[AsyncConnection]:
        """Serve the first waiters with what came free (under the lock); the stale to close."""
        served, stale = self._book.hand_over(self._clock())
        for waiter in served:
            waiter.wake()
        return stale

    async def close(self) -> None:
        with self._lock:
            idle, waiters = self._book.close()
            for waiter in waiters:
                waiter.wake()
        await _close_all(idle)


class _Waiter(Waiter[AsyncConnection]):
    """A coroutine waiting for its turn, on a future of its loop: the pool serves every
    loop of the process, so it may be served from another thread."""

    __slots__ = ("loop", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.woken: asyncio.Future[None] = loop.create_future()

    def gone(self) -> bool:
        # Its future is cancelled when it is (a timeout cancels it too); a closed loop
        # will never run it again.
        return self.woken.done() or self.loop.is_closed()

    def wake(self) -> None:
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:  # its own loop's thread: no need to write to the loop's self-pipe
            _set_if_pending(self.woken)
            return
        with contextlib.suppress(RuntimeError):  # its loop closed since `gone`: never runs
            self.loop.call_soon_threadsafe(_set_if_pending, self.woken)


def _set_if_pending(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _close_all(conns: list[AsyncConnection]) -> None:
    for conn in conns:
        await _close_quietly(conn)


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
