"""The bookkeeping both connection pools share: idle connections, how many are open, ages.

No I/O and no locking of its own: `_pool.Pool` calls it under a threading Condition,
`_pool_async.AsyncPool` under a lock held for a few dictionary operations. Connections it
hands back to close are closed by the caller, outside the lock.
"""

from __future__ import annotations

from typing import Generic, TypeVar

C = TypeVar("C")

#: An idle connection unused for this long is closed instead of reused (seconds): firewalls
#: and PgBouncer drop quiet connections, and after a failover it may point at the old server.
MAX_IDLE = 300.0
#: Connections are replaced after this long (seconds), so that load moves to new servers.
MAX_LIFETIME = 1800.0


class PoolBook(Generic[C]):
    """Counts the open connections of a pool and keeps its idle ones (most recent last)."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.closed = False
        self._idle: list[tuple[C, float]] = []  # (connection, returned at)
        self._opened: dict[int, float] = {}  # id(connection) -> opened at
        self._size = 0

    def take(self, now: float) -> tuple[C | None, bool, list[C]]:
        """(an idle connection, or None; whether a new one may be opened; stale ones to close).

        When a new one may be opened its slot is taken: call `opened` or `abandoned` next.
        """
        stale: list[C] = []
        while self._idle:
            conn, returned = self._idle.pop()
            if now - returned < MAX_IDLE and now - self._opened.get(id(conn), now) < MAX_LIFETIME:
                return conn, False, stale
            stale.append(conn)
            self._forget(conn)
        if self._size < self.max_size:
            self._size += 1
            return None, True, stale
        return None, False, stale

    def opened(self, conn: C, now: float) -> None:
        """A connection was opened in a slot `take` granted."""
        self._opened[id(conn)] = now

    def abandoned(self) -> None:
        """Opening a connection in a slot `take` granted failed: the slot is free again."""
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

    def close(self) -> list[C]:
        """No more connections; returns the idle ones to close."""
        self.closed = True
        idle = [conn for conn, _ in self._idle]
        self._idle.clear()
        for conn in idle:
            self._forget(conn)
        return idle

    def _forget(self, conn: C) -> None:
        if self._opened.pop(id(conn), None) is not None:
            self._size -= 1
