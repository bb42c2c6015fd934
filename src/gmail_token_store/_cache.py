"""The in-process caches: Credentials handed out, and rows checked. Bounded, lock-free on
hits.

A hit is one `OrderedDict.get` (atomic under the GIL) and a float comparison, so threads
never queue behind each other to read. Inserts and evictions take a lock and use the
"second chance" rule: an entry that was hit since it last reached the front of the queue
is moved to the back instead of being evicted, which approximates LRU without reordering
on every hit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from google.oauth2.credentials import Credentials

from ._core.flows import Checked
from ._core.record import TokenRecord


class CacheEntry:
    """Credentials served until `serve_until` (monotonic seconds), the record they were
    made from, and when it was read (monotonic)."""

    __slots__ = ("credentials", "read_at", "record", "referenced", "scopes", "serve_until")

    def __init__(
        self,
        credentials: Credentials,
        scopes: frozenset[str] | None,
        serve_until: float,
        record: TokenRecord | None = None,
        read_at: float = 0.0,
    ) -> None:
        self.credentials = credentials
        self.scopes = scopes
        self.serve_until = serve_until
        self.record = record
        self.read_at = read_at
        self.referenced = False

    def covers(self, wanted: Sequence[str] | None) -> bool:
        """Were all of `wanted` granted? (Nothing wanted: yes.)"""
        return wanted is None or (self.scopes is not None and self.scopes.issuperset(wanted))


class CredentialsCache:
    """Maps canonical user ids to CacheEntry; `max_entries` bounds memory."""

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, now: float) -> CacheEntry | None:
        """Return the entry if it may still be served at monotonic time `now`; never blocks."""
        entry = self._entries.get(user_id)
        if entry is None or now >= entry.serve_until:
            return None
        entry.referenced = True
        return entry

    def put(
        self,
        user_id: str,
        credentials: Credentials,
        scopes: frozenset[str] | None,
        *,
        seconds_left: float,
        refresh_margin: float,
        now: float,
        record: TokenRecord | None = None,
    ) -> None:
        """Cache credentials for `ttl`, but never past the point they enter the refresh margin."""
        serve_for = min(self.ttl, seconds_left - refresh_margin)
        if serve_for <= 0:
            self.invalidate(user_id)
            return
        entry = CacheEntry(credentials, scopes, now + serve_for, record, now)
        with self._lock:
            self._entries[user_id] = entry
            self._entries.move_to_end(user_id)
            # Each pass over the queue clears a flag, so this ends within two passes.
            while len(self._entries) > self._max_entries:
                oldest_id, oldest = self._entries.popitem(last=False)
                if oldest.referenced and oldest_id != user_id:
                    oldest.referenced = False
                    self._entries[oldest_id] = oldest

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def after_fork(self) -> None:
        """In a child process: a fresh lock (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()


class CheckedCache:
    """Rows this store checked lately (`check(max_age=...)`): what was read, and when.

    A status is decided again from the cached record each time it is served, so its
    time-dependent parts (seconds left, due, expired) are right; what may be stale is only
    the row itself, by at most the caller's `max_age`. Bounded like the Credentials cache
    (oldest inserted leave first).
    """

    def __init__(self, *, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Checked, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user_id: str, *, read_after: float) -> Checked | None:
        entry = self._entries.get(user_id)
        if entry is None or entry[1] < read_after:
            return None
        return entry[0]

    def put(self, user_id: str, checked: Checked, now: float) -> None:
        with self._lock:
            self._entries[user_id] = (checked, now)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
