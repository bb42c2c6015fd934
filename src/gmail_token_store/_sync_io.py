"""The I/O a TokenStore performs for the core's effects: psycopg, httpx, clock, sleep, events.

`SyncIO.drive` runs a flow (see `_effects`): it performs each effect the flow yields and
sends the result back, or throws the error in. It decides nothing about tokens; what it
knows is how to run a statement on a pooled connection (and discard one that failed), keep
a transaction's connection from LockRow to Commit, POST a form, and share a refresh
between threads. Its connections, HTTP client and single flight belong to the process
that opened them: a forked child opens its own on first use (see `_fork`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

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
from ._flight import SingleFlight
from ._options import Conninfo, Settings
from ._pool import Connection, Pool, PoolAdapter
from ._sql import EXPIRY_COLUMN, READ_ROW
from ._store_common import timestamptz_column
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


class Transaction:
    """The connection a flow's transaction runs on, between LockRow and Commit."""

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pool: Pool | PoolAdapter | None = None


class SyncIO:
    """Performs effects for one TokenStore (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        conninfo: Conninfo | ConnectionPool[Any],
        cache: CredentialsCache | None,
    ) -> None:
        self._settings = settings
        self._conninfo = conninfo
        self._cache = cache
        # Per-statement override: with a pool we do not own we cannot set the connection's.
        self._prepare: bool | None = False if settings.prepare_threshold is None else None
        self._resources: _Resources | None = None
        self._lock = threading.Lock()
        self.closed = False
        self._handlers: dict[type, Callable[[Any, Transaction], Any]] = {
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

    def drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_effects`)."""
        tx = Transaction()
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

    @property
    def opened(self) -> bool:
        """Has this process opened connections (is there anything to close)?"""
        return self._resources is not None and self._resources.pid == os.getpid()

    def close(self) -> None:
        """Close this process's connections and HTTP client (a pool passed in stays open)."""
        self.closed = True
        resources, self._resources = self._resources, None
        if resources is not None and resources.pid == os.getpid():
            resources.pool.close()
            resources.http.close()

    def after_fork(self) -> None:
        """In a child: forget the parent's resources without touching them (see `_fork`)."""
        _fork.inherit(self._resources)
        self._resources = None
        self._lock = threading.Lock()

    def _open(self) -> _Resources:
        resources = self._resources
        if resources is not None and resources.pid == os.getpid():
            return resources
        with self._lock:
            if self.closed:
                raise TokenStoreError("this TokenStore is closed")
            resources = self._resources
            if resources is None or resources.pid != os.getpid():
                # (a pid mismatch here: forked without Python's at-fork hooks)
                _fork.inherit(resources)
                resources = self._resources = self._new_resources()
            return resources

    def _new_resources(self) -> _Resources:
        settings = self._settings
        pool: Pool | PoolAdapter
        if isinstance(self._conninfo, ConnectionPool):
            pool = PoolAdapter(self._conninfo, connect_timeout=settings.connect_timeout)
        else:
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

    # --- effects: the database -------------------------------------------------------------

    def _read_row(self, effect: ReadRow, _tx: Transaction) -> RowRead:
        pool = self._open().pool
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

    def _query(self, effect: Query, _tx: Transaction) -> list[tuple[Any, ...]]:
        pool = self._open().pool
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

    def _lock_row(self, effect: LockRow, tx: Transaction) -> RowRead:
        pool = tx.pool = self._open().pool
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

    def _execute(self, effect: Execute, tx: Transaction) -> list[tuple[Any, ...]]:
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

    def _commit(self, _effect: Commit, tx: Transaction) -> None:
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

    def _end_abandoned(self, tx: Transaction) -> None:
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

    def _post_form(self, effect: PostForm, _tx: Transaction) -> HttpAnswer:
        try:
            with self._open().http.stream(
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

    def _forget(self, effect: Forget, _tx: Transaction) -> None:
        if self._cache is not None:
            self._cache.invalidate(effect.user_id)

    def _shared(self, effect: Shared, _tx: Transaction) -> tuple[Any, bool]:
        return self._open().flights.run(
            effect.key, lambda: self.drive(effect.flow()), wait=effect.wait
        )


_ROLLBACK_OK = frozenset(
    {psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR}
)


def _read_clock(_effect: ReadClock, _tx: Transaction) -> LocalClock:
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
