"""The bookkeeping both connection pools share: idle connections, how many are open, ages,
and who waits, in order.

No I/O and no locking of its own: `_pool.Pool` and `_pool_async.AsyncPool` call it under a
thread lock held for a few list operations. Connections it hands back to close are closed
by the caller, outside the lock.

First come, first served (as psycopg_pool does it): a connection given back, or a slot
freed, goes straight to the first waiter (`hand_over`), and a newcomer takes an idle
connection or a slot only when nobody waits (`take`). A woken waiter that had to compete
again for what woke it would lose to callers arriving meanwhile, over and over: in a
benchmark of the API server (64 coroutines on 10 connections) the longest wait was 4 s for
a p99 of 20 ms, and a waiter could reach `connect_timeout` against a healthy database.
"""

from __future__ import annotations

import abc
import enum
from collections import deque
from contextlib import suppress
from typing import Generic, TypeVar

C = TypeVar("C")

#: An idle connection unused for this long is closed instead of reused (seconds): firewalls
#: and PgBouncer drop quiet connections, and after a failover it may point at the old server.
MAX_IDLE = 300.0
#: Connections are replaced after this long (seconds), so that load moves to new servers.
MAX_LIFETIME = 1800.0


class Slot(enum.Enum):
    """Granted instead of a connection: a slot is free, open a connection in it (then call
    `PoolBook.opened`, or `PoolBook.abandoned` if that fails)."""

    FREE = "free"


class Waiter(abc.ABC, Generic[C]):
    """A caller queued for a connection; each pool adds how it is woken.

    `given` is set under the pool's lock as the waiter leaves the queue, before it is
    woken: a waiter that times out or is cancelled just as it is served still finds what
    it was handed (`PoolBook.withdraw`), and gives it back rather than leaking it.
    """

    __slots__ = ("given",)

    def __init__(self) -> None:
        self.given: C | Slot | None = None

    def gone(self) -> bool:
        """Has it stopped waiting (cancelled) before being served? Then it is skipped."""
        return False

    @abc.abstractmethod
    def wake(self) -> None:
        """Wake it (it was served, or the pool closed); called under the pool's lock."""


class PoolBook(Generic[C]):
    """Counts the open connections of a pool, keeps its idle ones (most recent last) and
    its waiters (first come first)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.closed = False
        self._idle: list[tuple[C, float]] = []  # (connection, returned at)
        self._opened: dict[int, float] = {}  # id(connection) -> opened at
        self._size = 0
        self._waiters: deque[Waiter[C]] = deque()

    def take(self, now: float) -> tuple[C | Slot | None, list[C]]:
        """For a caller arriving: (an idle connection, a free slot, or None: it must `wait`;
        stale connections to close). Nothing is taken while others wait."""
        if self._waiters:
            return None, []
        return self._grant(now)

    def wait(self, waiter: Waiter[C]) -> None:
        """Queue a caller that `take` gave nothing."""
        self._waiters.append(waiter)

    def withdraw(self, waiter: Waiter[C]) -> C | Slot | None:
        """A waiter stops waiting (woken, timed out or cancelled): what it was handed, if
        anything; after this it is handed nothing more."""
        if waiter.given is None:
            with suppress(ValueError):  # skipped (gone), or dropped by close
                self._waiters.remove(waiter)
        return waiter.given

    def hand_over(self, now: float) -> tuple[list[Waiter[C]], list[C]]:
        """Serve the first waiters, in order, with what is idle or free: call after
        `give_back`, `discard` and `abandoned`. Returns (the waiters served, to wake; stale
        connections to close)."""
        served: list[Waiter[C]] = []
        stale: list[C] = []
        while self._waiters:
            if self._waiters[0].gone():
                self._waiters.popleft()
                continue
            grant, old = self._grant(now)
            stale += old
            if grant is None:
                break
            waiter = self._waiters.popleft()
            waiter.given = grant
            served.append(waiter)
        return served, stale

    def _grant(self, now: float) -> tuple[C | Slot | None, list[C]]:
        stale: list[C] = []
        while self._idle:
            conn, returned = self._idle.pop()
            if now - returned < MAX_IDLE and now - self._opened.get(id(conn), now) < MAX_LIFETIME:
                return conn, stale
            stale.append(conn)
            self._forget(conn)
        if self._size < self.max_size:
            self._size += 1
            return Slot.FREE, stale
        return None, stale

    def opened(self, conn: C, now: float) -> None:
        """A connection was opened in a slot granted (`Slot.FREE`)."""
        self._opened[id(conn)] = now

    def abandoned(self) -> None:
        """Opening a connection in a granted slot failed (or it was not used): the slot is
        free again."""
        self._size -= 1

    def give_back(self, conn: C, *, healthy: bool, now: float) -> bool:
        """Keep a connection returned healthy (True); otherwise forget it (close it)."""
        if healthy and not self.closed:
            self._idle.append((conn, now))
            return True
        self._forget(conn)
        return False

    def discard(self, conn: C, *, broken: bool) -> list[C]:
        """Forget a failed connection; if it broke, the idle ones too (a server restart or a
        failover ends them all). Returns every connection to close."""
        self._forget(conn)
        dropped = [idle for idle, _ in self._idle] if broken else []
        for idle in dropped:
            self._forget(idle)
        if broken:
            self._idle.clear()
        return [conn, *dropped]

    def close(self) -> tuple[list[C], list[Waiter[C]]]:
        """No more connections: returns (the idle ones, to close; the waiters, to wake: they
        find the pool closed)."""
        self.closed = True
        idle = [conn for conn, _ in self._idle]
        self._idle.clear()
        for conn in idle:
            self._forget(conn)
        waiters = list(self._waiters)
        self._waiters.clear()
        return idle, waiters

    def _forget(self, conn: C) -> None:
        if self._opened.pop(id(conn), None) is not None:
            self._size -= 1
