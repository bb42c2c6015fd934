"""The sync store's connections: a small pool that connects in the caller's thread.

Why not psycopg_pool's ConnectionPool for the store's own connections: its worker threads
open connections in the background, so (1) a refused password or an unknown database
surfaces only as a timeout after `connect_timeout`, its cause lost in a log line; (2) after
an outage the next connection waits for its reconnect backoff (seconds to minutes) rather
than for the database; (3) its threads and sockets do not survive `os.fork`. Here a caller
that finds no idle connection opens one itself, bounded by `connect_timeout`: errors come
back at once with their cause, and the first call after an outage connects as soon as the
server accepts. A pool a service passes in (`PoolAdapter`) is used as it is.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .._core.errors import ConfigurationError, DatabaseUnavailableError, TokenStoreError
from .conninfo import Conninfo
from .errors import connect_error, drop_traceback
from .pool_book import PoolBook, Slot, Waiter

Connection = psycopg.Connection[tuple[Any, ...]]
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"


class Pool:
    """At most `max_size` autocommit connections, first come first served; no threads of
    its own."""

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
        self._book: PoolBook[Connection] = PoolBook(max_size)

    def getconn(self) -> Connection:
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
                waiter = _Waiter()
                self._book.wait(waiter)
        if grant is None:
            grant = self._wait(waiter, deadline)
        elif stale:
            try:
                _close_all(stale)
            except BaseException:
                self._give_up(grant)
                raise
        return self._connect(deadline) if grant is Slot.FREE else grant

    def _wait(self, waiter: _Waiter, deadline: float) -> Connection | Slot:
        """Wait for a connection or a slot handed over in turn (`PoolBook.hand_over`)."""
        try:
            waiter.woken.wait(max(deadline - self._clock(), 0.0))
        except BaseException:  # interrupted: what came meanwhile goes to the next waiter
            with self._lock:
                given = self._book.withdraw(waiter)
            if given is not None:
                self._give_up(given)
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

    def _give_up(self, given: Connection | Slot) -> None:
        """Pass on what was granted to a caller that will not use it."""
        if given is Slot.FREE:
            self._abandon_slot()
        else:
            self.putconn(given)

    def _connect(self, deadline: float) -> Connection:
        timeout = max(deadline - self._clock(), 0.0)
        failure: TokenStoreError | None = None
        try:
            conn = psycopg.Connection.connect(
                self._conninfo.dsn,
                autocommit=True,
                prepare_threshold=self._prepare_threshold,
                # libpq counts whole seconds, at least 2.
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
        if failure is not None:  # raised here, not in the except: nothing chains to libpq's error
            self._abandon_slot()
            raise failure
        with self._lock:
            self._book.opened(conn, self._clock())
        return conn

    def _abandon_slot(self) -> None:
        with self._lock:
            self._book.abandoned()
            stale = self._hand_over()
        _close_all(stale)

    def putconn(self, conn: Connection) -> None:
        """Give a connection back: to the first waiter, or kept idle if it is healthy and
        idle; closed otherwise."""
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status is _IDLE
        with self._lock:
            kept = self._book.give_back(conn, healthy=healthy, now=self._clock())
            stale = self._hand_over()
        _close_all(stale if kept else [conn, *stale])

    def discard(self, conn: Connection) -> None:
        """Close a connection that failed (and the idle ones, if it broke: see PoolBook)."""
        with self._lock:
            closing = self._book.discard(conn, broken=conn.broken or conn.closed)
            closing += self._hand_over()  # every slot freed may serve one waiter
        _close_all(closing)

    def _hand_over(self) -> list[Connection]:
        """Serve the first waiters with what came free (under the lock); the stale to close."""
        served, stale = self._book.hand_over(self._clock())
        for waiter in served:
            waiter.wake()
        return stale

    def close(self) -> None:
        with self._lock:
            idle, waiters = self._book.close()
            for waiter in waiters:
                waiter.wake()
        _close_all(idle)


class _Waiter(Waiter[Connection]):
    """A thread waiting for its turn, on its own event (so that only it is woken)."""

    __slots__ = ("woken",)

    def __init__(self) -> None:
        super().__init__()
        self.woken = threading.Event()

    def wake(self) -> None:
        self.woken.set()


def _close_all(conns: list[Connection]) -> None:
    for conn in conns:
        _close_quietly(conn)


def _close_quietly(conn: Connection) -> None:
    # Closing a dead connection may fail; it is gone either way.
    with contextlib.suppress(Exception):
        conn.close()


class PoolAdapter:
    """A psycopg_pool.ConnectionPool the service owns, used through the Pool interface.

    The service opens and closes it. After `os.fork` it cannot be used: its worker threads
    and sockets belong to the parent, and it is not ours to replace.
    """

    def __init__(self, pool: ConnectionPool[Any], *, connect_timeout: float) -> None:
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._pid = os.getpid()

    def getconn(self) -> Connection:
        if os.getpid() != self._pid:
            raise ConfigurationError(
                "the psycopg_pool pool given to this store was opened before os.fork(); "
                "open the pool (and the store) in each worker process after the fork"
            )
        try:
            conn: Connection = self._pool.getconn(timeout=self._connect_timeout)
        except PoolTimeout:
            pass
        else:
            return conn
        # (raised outside the except: the pool's error is not its context)
        raise DatabaseUnavailableError(
            f"no database connection from the service's pool within "
            f"{self._connect_timeout:g} s; retry later"
        )

    def putconn(self, conn: Connection) -> None:
        self._pool.putconn(conn)

    def discard(self, conn: Connection) -> None:
        _close_quietly(conn)
        self._pool.putconn(conn)  # the pool replaces a closed connection
        if conn.broken:
            self._pool.check()

    def close(self) -> None:
        """The service owns the pool: nothing to do."""


def hot_cursor(conn: Connection) -> psycopg.Cursor[tuple[Any, ...]]:
    """The connection's cursor for the hot path, made once per connection.

    `conn.execute()` builds and discards a cursor per call, which costs about a fifth of
    a loopback round trip. A pooled connection serves one caller at a time, so its cursor
    does too; it is closed with the connection.
    """
    cursor: psycopg.Cursor[tuple[Any, ...]] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor
