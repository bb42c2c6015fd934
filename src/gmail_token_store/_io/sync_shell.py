"""The sync shell: performs the core's effects for a TokenStore with psycopg and httpx.

`SyncShell.drive` runs a flow (see `_core.effects`): it performs each effect the flow
yields and sends the result back, or throws the error in. It decides nothing about tokens;
it knows how to run a statement on a pooled connection, keep a transaction's connection
from LockRow to its commit, POST a form, and share a refresh between threads. Driver
errors are mapped, and connections released, in one place (`_database`).

What it has open is per process (`resources`). `async_shell` is its twin, kept
line-parallel: a diff of the two shows the awaits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, assert_never

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from .._core.clock import ClockSample
from .._core.effects import (
    Commit,
    DatabaseEffect,
    Deliver,
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
from .._core.errors import DatabaseUnavailableError
from .._core.events import EventHook
from .conninfo import Conninfo
from .errors import database_error, expect_user, unreachable
from .events import announce, logger
from .http import deadline
from .pool import Connection, Pool, PoolAdapter, hot_cursor
from .resources import Resources
from .sql import EXPIRY_COLUMN, READ_ROW, SQL, lock_row, privilege, timestamptz_column

T = TypeVar("T")
#: Seconds hot-path reads go to the primary after the standby failed to answer.
STANDBY_PAUSE = 5.0
_IDLE = psycopg.pq.TransactionStatus.IDLE
_ROLLBACK_OK = frozenset(
    {psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR}
)


class Transaction:
    """The connection a flow's transaction runs on, from LockRow to its commit."""

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pool: Pool | PoolAdapter | None = None


class SyncShell:
    """Performs effects for one TokenStore (see the module docstring)."""

    def __init__(
        self,
        conninfo: Conninfo | ConnectionPool[Any],
        *,
        max_connections: int,
        connect_timeout: float,
        prepare_threshold: int | None,
        on_event: EventHook | None,
        forget: Callable[[str], None],
        read_conninfo: Conninfo | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._read_conninfo = read_conninfo
        #: Until when (monotonic) hot-path reads skip the standby, after it failed.
        self._standby_down_until = 0.0
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._prepare_threshold = prepare_threshold
        # Per-statement override: with a pool we do not own we cannot set the connection's.
        self._prepare: bool | None = False if prepare_threshold is None else None
        self._on_event = on_event
        self._forget = forget
        self.resources = Resources(
            self._new_pool,
            max_connections,
            self._new_read_pool if read_conninfo is not None else None,
        )

    def drive(self, flow: Flow[T]) -> T:
        """Perform each effect `flow` yields until it returns (see `_core.effects`)."""
        tx = Transaction()
        try:
            effect = flow.send(None)
            while True:
                try:
                    result = self._perform(effect, tx)
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
                self._end_abandoned(tx)

    def _perform(self, effect: Effect, tx: Transaction) -> object:
        result: object = None
        match effect:
            case ReadRow() | Query() | LockRow() | Execute() | Commit():
                result = self._database(effect, tx)
            case PostForm():
                result = self._post_form(effect)
            case Deliver():
                result = self._deliver(effect)
            case Sleep():
                time.sleep(effect.seconds)
            case Emit():
                announce(effect, self._on_event, time.monotonic())
            case Log():
                logger.log(effect.level, "%s", effect.message)
            case Forget():
                self._forget(effect.user_id)
            case Shared():
                result = self._shared(effect)
            case _:
                assert_never(effect)
        return result

    def _new_pool(self) -> Pool | PoolAdapter:
        if isinstance(self._conninfo, ConnectionPool):
            return PoolAdapter(self._conninfo, connect_timeout=self._connect_timeout)
        return Pool(
            self._conninfo,
            max_size=self._max_connections,
            connect_timeout=self._connect_timeout,
            prepare_threshold=self._prepare_threshold,
        )

    def _new_read_pool(self) -> Pool:
        assert self._read_conninfo is not None  # noqa: S101 - only made when there is one
        return Pool(
            self._read_conninfo,
            max_size=self._max_connections,
            connect_timeout=self._connect_timeout,
            prepare_threshold=self._prepare_threshold,
        )

    # --- the database: every statement, one error mapping, one release ---------------------

    def _database(self, effect: DatabaseEffect, tx: Transaction) -> object:
        """Run one database effect. A failure ends the connection's part here: an autocommit
        connection is discarded, a transaction rolled back (or its connection discarded,
        which ends the session and its lock); `drive` maps the driver's error."""
        if isinstance(effect, Execute | Commit):
            conn, pool = tx.conn, tx.pool
            assert conn is not None  # noqa: S101 - LockRow came first
            assert pool is not None  # noqa: S101
        else:
            opened = self.resources.get()
            if isinstance(effect, ReadRow) and opened.read_pool is not None:
                standby = self._read_standby(opened.read_pool, effect)
                if standby is not None:
                    return standby
            pool = opened.pool
            conn = pool.getconn()
            if isinstance(effect, LockRow):
                tx.conn, tx.pool = conn, pool
        try:
            result = self._run(conn, effect)
        except BaseException:
            if tx.conn is conn:
                self._end_abandoned(tx)
            else:
                pool.discard(conn)
            raise
        if tx.conn is not conn:
            pool.putconn(conn)
        elif isinstance(effect, Commit) or (isinstance(effect, Execute) and effect.commit):
            tx.conn = None
            pool.putconn(conn)
        return result

    def _read_standby(self, pool: Pool, effect: ReadRow) -> RowRead | None:
        """The hot-path read on a standby, or None when it does not answer: the primary
        serves it then, and for STANDBY_PAUSE s (a standby down, or blackholed, must not
        take the hot path with it, nor make every call wait for its connect timeout)."""
        if time.monotonic() < self._standby_down_until:
            return None
        try:
            conn = pool.getconn()
        except DatabaseUnavailableError:
            self._standby_down_until = time.monotonic() + STANDBY_PAUSE
            return None
        try:
            read = self._run(conn, effect)
        except psycopg.OperationalError:  # also a query cancelled by a recovery conflict
            pool.discard(conn)
            self._standby_down_until = time.monotonic() + STANDBY_PAUSE
            return None
        except BaseException:
            pool.discard(conn)
            raise
        pool.putconn(conn)
        assert isinstance(read, RowRead)  # noqa: S101 - what a ReadRow returns
        return RowRead(read.row, read.clock, read.expiry_has_time_zone, standby=True)

    def _run(self, conn: Connection, effect: DatabaseEffect) -> object:
        match effect:
            case ReadRow():
                sent = time.time()
                cursor = hot_cursor(conn)
                params = {"user_id": effect.user_id}
                row = cursor.execute(READ_ROW.text, params, prepare=self._prepare).fetchone()
                received = time.time()
                expect_user(row, effect.user_id)
                if conn.info.transaction_status is not _IDLE:
                    conn.commit()  # a pool handed to us may not be autocommit
                return RowRead(row, ClockSample(row[-1], sent, received) if row else None)
            case Query():
                rows = self._rows(conn, effect)
                if conn.info.transaction_status is not _IDLE:
                    conn.commit()
                return rows
            case LockRow():
                # One simple-protocol query: BEGIN (unless psycopg already began one on a
                # connection that is not autocommit), the timeouts, the lock.
                statement = lock_row(effect.user_id, effect.wait_ms, effect.idle_timeout_ms)
                if conn.autocommit:
                    statement = sql.SQL("BEGIN; ") + statement
                sent = time.time()
                cursor = conn.execute(statement, prepare=False)
                while cursor.nextset():  # to the SELECT's result
                    pass
                row = cursor.fetchone()
                received = time.time()
                expect_user(row, effect.user_id)
                has_tz = timestamptz_column(cursor.description, EXPIRY_COLUMN)
                return RowRead(row, ClockSample(row[-1], sent, received) if row else None, has_tz)
            case Execute():
                rows = self._rows(conn, effect)
                if effect.commit:
                    conn.commit()
                return rows
            case Commit():
                conn.commit()
                return None
            case _:
                assert_never(effect)

    def _rows(self, conn: Connection, effect: Query | Execute) -> list[Row]:
        text = SQL[effect.statement].text_for(conn.info.server_version)
        cursor = conn.execute(text, effect.params, prepare=self._prepare)
        rows = cursor.fetchall() if cursor.description is not None else []
        for row in rows:
            expect_user(row, effect.user_id)
        return rows

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

    # --- the token endpoint and the single flight ------------------------------------------

    def _post_form(self, effect: PostForm) -> HttpAnswer:
        http = self.resources.get().http
        try:
            with (
                deadline(effect.timeout),
                http.stream(
                    "POST", effect.url, data=effect.form, timeout=effect.timeout
                ) as response,
            ):
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > effect.max_bytes:
                        break
                return HttpAnswer(response.status_code, bytes(body))
        except Exception as exc:
            failure = unreachable(exc)
        raise failure  # (outside the except: the driver's error is not its context)

    def _deliver(self, effect: Deliver) -> int:
        http = self.resources.get().http
        try:
            with deadline(effect.timeout):
                response = http.post(
                    effect.url, content=effect.body, headers=effect.headers, timeout=effect.timeout
                )
                return response.status_code
        except Exception as exc:
            failure = unreachable(exc)
        raise failure  # (outside the except: the driver's error is not its context)

    def _shared(self, effect: Shared[Any]) -> tuple[Any, bool]:
        return self.resources.get().flights.run(
            effect.key, lambda: self.drive(effect.flow()), wait=effect.wait
        )
