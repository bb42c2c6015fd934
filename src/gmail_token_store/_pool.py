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
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ._db_errors import connect_error, drop_traceback
from ._options import Conninfo
from .exceptions import ConfigurationError, DatabaseUnavailableError, TokenStoreError

Connection = psycopg.Connection[tuple[Any, ...]]
_IDLE = psycopg.pq.TransactionStatus.IDLE

#: An idle connection unused for this long is closed instead of reused (seconds): firewalls
#: and PgBouncer drop quiet connections, and after a failover it may point at the old server.
MAX_IDLE = 300.0
#: Connections are replaced after this long (seconds), so that load moves to new servers.
MAX_LIFETIME = 1800.0


class _Entry:
    __slots__ = ("conn", "opened", "returned")

    def __init__(self, conn: Connection, opened: float) -> None:
        self.conn = conn
        self.opened = opened
        self.returned = opened


class Pool:
    """At most `max_size` autocommit connections; no threads of its own."""

    def __init__(
        self,
        conninfo: Conninfo,
        *,
        max_size: int,
        connect_timeout: float,
        prepare_threshold: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._prepare_threshold = prepare_threshold
        self._clock = clock
        self._idle: list[_Entry] = []
        self._opened: dict[int, float] = {}  # id(conn) -> monotonic open time
        self._size = 0
        self._closed = False
        self._ready = threading.Condition(threading.Lock())

    def getconn(self) -> Connection:
        """An idle connection, or a new one; waits at most `connect_timeout` for a slot.

        Raises:
            DatabaseUnavailableError, ConfigurationError: see `_db_errors.connect_error`.
        """
        deadline = self._clock() + self._connect_timeout
        stale: list[Connection] = []
        with self._ready:
            while True:
                if self._closed:
                    raise DatabaseUnavailableError("this store is closed")
                now = self._clock()
                while self._idle:
                    entry = self._idle.pop()
                    if now - entry.returned < MAX_IDLE and now - entry.opened < MAX_LIFETIME:
                        conn = entry.conn
                        break
                    stale.append(entry.conn)
                    self._forget(entry.conn)
                else:
                    conn = None
                if conn is not None or self._size < self._max_size:
                    break
                if not self._ready.wait(deadline - now) and self._clock() >= deadline:
                    raise DatabaseUnavailableError(
                        f"all {self._max_size} database connections of this store stayed busy "
                        f"for {self._connect_timeout:g} s; retry later (or raise max_connections)"
                    )
            if conn is None:
                self._size += 1
        for old in stale:
            _close_quietly(old)
        return conn if conn is not None else self._connect(deadline)

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
            self._give_back_slot()
            raise
        if failure is not None:  # raised here, not in the except: nothing chains to libpq's error
            self._give_back_slot()
            raise failure
        with self._ready:
            self._opened[id(conn)] = self._clock()
        return conn

    def _give_back_slot(self) -> None:
        with self._ready:
            self._size -= 1
            self._ready.notify()

    def putconn(self, conn: Connection) -> None:
        """Give a connection back: kept if it is healthy and idle, closed otherwise."""
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status is _IDLE
        with self._ready:
            if healthy and not self._closed:
                entry = _Entry(conn, self._opened.get(id(conn), 0.0))
                entry.returned = self._clock()
                self._idle.append(entry)
                self._ready.notify()
                return
            self._forget(conn)
            self._ready.notify()
        _close_quietly(conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection that failed. If it broke, the idle ones likely did too (a
        server restart or failover ends them all): they are closed, so the retry and the
        next callers connect afresh instead of failing one by one."""
        broken = conn.broken or conn.closed
        with self._ready:
            self._forget(conn)
            dropped = [entry.conn for entry in self._idle] if broken else []
            if broken:
                for entry in self._idle:
                    self._forget(entry.conn)
                self._idle.clear()
            self._ready.notify_all()
        for other in [conn, *dropped]:
            _close_quietly(other)

    def _forget(self, conn: Connection) -> None:
        if self._opened.pop(id(conn), None) is not None:
            self._size -= 1

    def close(self) -> None:
        with self._ready:
            self._closed = True
            idle, self._idle = self._idle, []
            for entry in idle:
                self._forget(entry.conn)
            self._ready.notify_all()
        for entry in idle:
            _close_quietly(entry.conn)


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
        except PoolTimeout as exc:
            raise DatabaseUnavailableError(
                f"no database connection from the service's pool within "
                f"{self._connect_timeout:g} s; retry later"
            ) from exc
        return conn

    def putconn(self, conn: Connection) -> None:
        self._pool.putconn(conn)

    def discard(self, conn: Connection) -> None:
        _close_quietly(conn)
        self._pool.putconn(conn)  # the pool replaces a closed connection
        if conn.broken:
            self._pool.check()

    def close(self) -> None:
        """The service owns the pool: nothing to do."""
