"""Where a record becomes the Credentials a store hands out, with refresh() routed back, and
the caches of what was handed out (Credentials; rows checked).

googleapiclient and AuthorizedSession call `credentials.refresh(request)` when the token
expires or the API answers 401. A plain google-auth refresh would skip the row lock and
never be saved, so here it asks the store, which adopts a newer token already in the row
or refreshes under the lock and persists. The handed-out object carries no refresh token
and no client secret: nothing that holds it can refresh behind the store's back, and
`to_json()` or a pickle of it cannot leak them.

Expiries are kept by the database's clock; the Credentials get theirs converted to this
host's clock, so that google-auth's and googleapiclient's own checks (which read the
local clock) agree with the store on a host whose clock is off.

Credentials handed out by an AsyncTokenStore refresh through that store, from a thread
(`AsyncRefresher`): an asyncio service calls Gmail through googleapiclient in a worker
thread (`asyncio.to_thread`, Starlette's threadpool), and google-auth's
AsyncAuthorizedSession refreshes sync credentials in a worker thread too. Their
`refresh()` is a sync call: it is handed to the store's event loop
(`run_coroutine_threadsafe`), which refreshes under the row lock and persists, and the
thread waits for the result, a bounded time. Called on the loop's own thread it would
block the loop the refresh needs, so it refuses instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import google.auth.exceptions
import google.auth.transport
from google.auth.credentials import TokenState
from google.oauth2.credentials import Credentials

from ._core.clock import DatabaseClock
from ._core.errors import RefreshFailedError, TokenStoreError
from ._core.flows import Checked
from ._core.record import TokenRecord, from_epoch, in_range
from ._core.text import mask
from ._core.windows import ROUND_TRIP_SLACK
from ._core.windows import Windows as RefreshWindows

Windows = tuple[timedelta, timedelta]  # (mandatory, advisory) before expiry


class Refresher(Protocol):
    """Return a record with a token other than `rejected_token`, refreshing if needed.

    Called from whatever thread google-auth's caller runs in.
    """

    def __call__(self, user_id: str, rejected_token: str | None, /) -> TokenRecord: ...


class StoreCredentials(Credentials):
    """`google.oauth2.credentials.Credentials` bound to a store's row.

    google-auth treats a token as expired 3 min 45 s before its end and then refreshes it on
    the spot. The store decides freshness itself: inside its refresh window it may hand out
    a token with two minutes left while another caller refreshes, and that token must not
    send every googleapiclient call into a blocking refresh. So these credentials count as
    expired only inside the store's mandatory window, and as stale inside its refresh margin.
    """

    _refresher: Refresher | None
    _store_user_id: str
    _windows: Windows | None
    _clock: DatabaseClock | None

    @property
    def expired(self) -> bool:
        windows = getattr(self, "_windows", None)
        if windows is None or self.expiry is None:
            return bool(super().expired)
        return bool(_utcnow() >= self.expiry - windows[0])

    @property
    def token_state(self) -> TokenState:
        windows = getattr(self, "_windows", None)
        if windows is None or self.token is None or self.expiry is None:
            state: TokenState = super().token_state
            return state
        now = _utcnow()
        if now >= self.expiry - windows[0]:
            return TokenState.INVALID
        if now >= self.expiry - windows[1]:
            return TokenState.STALE
        return TokenState.FRESH

    def refresh(self, request: google.auth.transport.Request) -> None:  # noqa: ARG002
        """Replace the token through the store (row lock, persist); `request` is not used."""
        refresher = getattr(self, "_refresher", None)
        clock = getattr(self, "_clock", None)
        if refresher is None or clock is None:
            raise google.auth.exceptions.RefreshError(
                "these credentials were detached from their TokenStore (pickled or copied "
                "by hand); ask the store for new ones"
            )
        try:
            record = refresher(self._store_user_id, self.token)
        except TokenStoreError as exc:
            raise google.auth.exceptions.RefreshError(str(exc), retryable=exc.retryable) from exc
        self.token = record.access_token
        self.expiry = local_expiry(record, clock)

    def _make_copy(self) -> StoreCredentials:
        copy: StoreCredentials = super()._make_copy()  # type: ignore[no-untyped-call]
        copy.attach(
            self._store_user_id,
            getattr(self, "_refresher", None),
            getattr(self, "_windows", None),
            getattr(self, "_clock", None),
        )
        return copy

    def attach(
        self,
        user_id: str,
        refresher: Refresher | None,
        windows: Windows | None,
        clock: DatabaseClock | None,
    ) -> None:
        """Bind to the store's row: its user, its refresher, its windows and clock."""
        self._store_user_id = user_id
        self._refresher = refresher
        self._windows = windows
        self._clock = clock

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        for detached in ("_refresher", "_windows", "_clock"):  # google-auth's rules apply again
            state.pop(detached, None)
        return state

    def __repr__(self) -> str:
        expiry = self.expiry.isoformat(timespec="seconds") if self.expiry else None
        return (
            f"<StoreCredentials user_id={getattr(self, '_store_user_id', None)!r} "
            f"expiry={expiry!r} token={mask(self.token)}>"
        )


#: A host clock within this many seconds of the database's is taken as agreeing with it:
#: the offset is only known to half a round trip, and a second is nothing next to the
#: refresh windows. Beyond it, handed-out expiries are converted to the host's clock.
CLOCK_TOLERANCE = 1.0


def local_expiry(record: TokenRecord, clock: DatabaseClock) -> datetime | None:
    """The record's expiry as this host's clock will read it (naive UTC)."""
    if record.expiry is None or not record.access_token or abs(clock.offset) < CLOCK_TOLERANCE:
        return record.expiry
    local = clock.to_local(record.expiry_epoch)
    return from_epoch(local) if in_range(local) else record.expiry


def hand_out(
    record: TokenRecord, refresher: Refresher, windows: Windows, clock: DatabaseClock
) -> StoreCredentials:
    """Build the Credentials handed out for a record (no refresh token, no client secret)."""
    credentials = StoreCredentials(  # type: ignore[no-untyped-call]
        record.access_token,
        token_uri=record.token_uri,
        client_id=record.client_id,
        scopes=list(record.scopes) if record.scopes is not None else None,
        expiry=local_expiry(record, clock),
    )
    credentials.attach(record.user_id, refresher, windows, clock)
    return credentials


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


Adopt = Callable[[str, str | None], Coroutine[Any, Any, TokenRecord]]


class _LoopRefresher:
    """The Refresher for Credentials handed out on one event loop."""

    def __init__(self, adopt: Adopt, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._adopt = adopt
        self._loop = weakref.ref(loop)
        self._timeout = timeout

    def __call__(self, user_id: str, rejected_token: str | None, /) -> TokenRecord:
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise TokenStoreError(
                "the event loop these credentials came from has ended; ask the store again"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise TokenStoreError(
                "credentials from an AsyncTokenStore were refreshed on the event loop's own "
                "thread, which would block it: call googleapiclient in a worker thread "
                "(asyncio.to_thread), or await store.get_credentials() again"
            )
        future: concurrent.futures.Future[TokenRecord] = asyncio.run_coroutine_threadsafe(
            self._adopt(user_id, rejected_token), loop
        )
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RefreshFailedError(
                user_id,
                None,
                f"the store's event loop did not refresh within {self._timeout:g} s",
                cause="timeout",
            ) from None
        except concurrent.futures.CancelledError:
            raise RefreshFailedError(
                user_id, None, "the refresh was cancelled", cause="busy"
            ) from None


class AsyncRefresher:
    """Makes the Refresher for each event loop an AsyncTokenStore hands Credentials out on."""

    def __init__(self, adopt: Adopt, windows: RefreshWindows) -> None:
        self._adopt = adopt
        # the lock wait, the token request and the database round trips, at most
        self._timeout = windows.lock_timeout + windows.refresh_budget + ROUND_TRIP_SLACK
        self._bound: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Refresher] = (
            weakref.WeakKeyDictionary()
        )

    def bound_to(self, loop: asyncio.AbstractEventLoop) -> Refresher:
        refresher = self._bound.get(loop)
        if refresher is None:
            refresher = self._bound[loop] = _LoopRefresher(self._adopt, loop, self._timeout)
        return refresher

    def after_fork(self) -> None:
        self._bound = weakref.WeakKeyDictionary()


# --- the caches of what was handed out: Credentials, and rows checked -----------------------
#
# A hit is one `OrderedDict.get` (atomic under the GIL) and a float comparison, so threads
# never queue behind each other to read. Inserts and evictions take a lock and use the
# "second chance" rule: an entry that was hit since it last reached the front of the queue
# is moved to the back instead of being evicted, which approximates LRU without reordering
# on every hit.


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
