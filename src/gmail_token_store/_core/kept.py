"""Grants this process obtained, kept in memory until the row is known to hold them.

A refresh can rotate the refresh token: the endpoint sends a new one and revokes the old.
From the moment the answer arrives, the new grant exists only in this process. If the
write-back fails (the connection dropped, the database is down, an interrupt arrived, or a
failover lost a write that had been committed on the old primary), losing it would leave
the row with a revoked refresh token and kill the grant. So every grant is kept here:

* writing: the refresh that obtained it is writing it, under the row lock;
* unsaved: that write failed, so the grant is not known to be in the row. It is written by
  compare-and-set as soon as the database answers again (by any call of the store); until
  then refreshes for that user use the kept refresh token;
* saved: written, remembered for a while (`KEPT_FOR`) so that a row found *older* than what
  we wrote (after a failover to a standby that never received the write) is written again.

Decisions only; the flows in `flows` and `refresh` do the writing. Thread-safe: both
stores share it between threads (the async store between coroutines of one loop, which
needs no lock, but a lock held for a dict operation costs nothing there either). It also
owns when unsaved grants are tried again (`flush_due`), under the same lock.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from .record import TokenRecord

#: How long a saved grant is remembered, to repair a row that regressed (seconds).
KEPT_FOR = 6 * 3600.0
#: At most this many users' grants are remembered; saved ones leave first.
KEPT_MAX = 10_000
#: After a kept grant could not be written, pending grants are not tried again for this
#: long (seconds), unless a read succeeds first: callers do not each wait for a dead
#: database twice.
FLUSH_INTERVAL = 1.0

GrantState = Literal["writing", "unsaved", "saved"]


@dataclass(frozen=True, slots=True)
class KeptGrant:
    """A grant this process obtained for one row."""

    user_id: str
    row_id: int
    access_token: str = field(repr=False)
    #: The refresh token the grant holds now (the rotated one, or the one used).
    refresh_token: str = field(repr=False)
    #: The refresh token it replaced (equal to `refresh_token` without rotation).
    replaced_refresh_token: str = field(repr=False)
    expiry_epoch: float  # by the database's clock
    scopes: tuple[str, ...] | None
    state: GrantState
    kept_at: float  # monotonic seconds

    @property
    def pending(self) -> bool:
        """Not known to be in the row (being written, or its write failed)."""
        return self.state != "saved"


class Verdict(enum.Enum):
    """How a kept grant relates to the row as it is now."""

    IN_ROW = "in_row"  # the row holds our grant
    WRITE = "write"  # the row is older than our grant (never saved, or lost): write ours
    SUPERSEDED = "superseded"  # someone wrote a newer grant, or a new consent: forget ours


def verdict(kept: KeptGrant, record: TokenRecord) -> Verdict:
    """Compare a kept grant with the row; see `Verdict`."""
    if record.refresh_token not in (kept.refresh_token, kept.replaced_refresh_token):
        return Verdict.SUPERSEDED  # a new consent or an import: not ours to overwrite
    if record.access_token == kept.access_token:
        return Verdict.IN_ROW
    rotated = kept.refresh_token != kept.replaced_refresh_token
    if rotated and record.refresh_token == kept.replaced_refresh_token:
        return Verdict.WRITE  # the row still holds the refresh token our grant replaced
    if record.expiry_epoch >= kept.expiry_epoch:
        return Verdict.SUPERSEDED  # refreshed again since, from our lineage
    return Verdict.WRITE


class KeptGrants:
    """The kept grants of one store, by user id (bounded, see KEPT_FOR and KEPT_MAX)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: OrderedDict[str, KeptGrant] = OrderedDict()
        #: Number of unsaved grants: every call checks this one integer.
        self.unsaved_count = 0
        #: Monotonic time before which unsaved grants are not tried again; read without
        #: the lock (one float), written under it.
        self._next_flush = 0.0
        #: A write failed because the database did not answer: the next successful read
        #: lifts `_next_flush` (see `database_answered`).
        self._waits_for_database = False

    def get(self, user_id: str) -> KeptGrant | None:
        return self._grants.get(user_id)

    def pending(self) -> list[KeptGrant]:
        """Grants not known to be in their rows (being written, or unsaved)."""
        with self._lock:
            return [grant for grant in self._grants.values() if grant.pending]

    def unsaved(self) -> list[KeptGrant]:
        """Grants whose write failed: any call may write them now."""
        with self._lock:
            return [grant for grant in self._grants.values() if grant.state == "unsaved"]

    def keep(self, grant: KeptGrant, now: float) -> None:
        """Remember a grant (pending or saved), replacing any older one for the user."""
        with self._lock:
            self._store(grant)
            self._expire(now)

    def saved(self, user_id: str, access_token: str) -> None:
        """The row now holds the grant with this access token."""
        self._set_state(user_id, access_token, "saved")

    def unsaved_now(self, user_id: str, access_token: str) -> None:
        """Writing the grant with this access token failed: it waits for the database."""
        self._set_state(user_id, access_token, "unsaved")

    def _set_state(self, user_id: str, access_token: str, state: GrantState) -> None:
        with self._lock:
            grant = self._grants.get(user_id)
            if grant is not None and grant.state != state and grant.access_token == access_token:
                self._store(dataclasses.replace(grant, state=state))

    def forget(self, user_id: str, access_token: str | None = None) -> None:
        """Drop the user's grant (only if it still holds `access_token`, when given)."""
        with self._lock:
            grant = self._grants.get(user_id)
            if grant is not None and access_token in (None, grant.access_token):
                self._remove(user_id)

    # --- when unsaved grants are tried again -----------------------------------------------

    def flush_due(self, now: float) -> bool:
        """May unsaved grants be tried now (monotonic `now`)?"""
        return now >= self._next_flush

    def defer_flush(self, now: float, *, database_down: bool) -> None:
        """Writing failed (the database did not answer, or the row was busy): not again
        for FLUSH_INTERVAL, unless (`database_down`) a read succeeds first."""
        with self._lock:
            self._next_flush = now + FLUSH_INTERVAL
            self._waits_for_database = self._waits_for_database or database_down

    def database_answered(self) -> None:
        """A read succeeded: if writes were waiting for the database, try them now."""
        if self._waits_for_database:
            with self._lock:
                self._waits_for_database = False
                self._next_flush = 0.0

    def flush_now(self) -> None:
        """Try unsaved grants at the next chance, whatever failed before (a store closing)."""
        with self._lock:
            self._next_flush = 0.0

    def after_fork(self) -> None:
        """In a child process: the parent keeps (and writes) its grants; start empty."""
        self._lock = threading.Lock()
        self._grants = OrderedDict()
        self.unsaved_count = 0
        self._next_flush = 0.0
        self._waits_for_database = False

    # --- under the lock ----------------------------------------------------------------

    def _store(self, grant: KeptGrant) -> None:
        self._remove(grant.user_id)
        self._grants[grant.user_id] = grant
        self.unsaved_count += grant.state == "unsaved"

    def _remove(self, user_id: str) -> None:
        old = self._grants.pop(user_id, None)
        if old is not None:
            self.unsaved_count -= old.state == "unsaved"

    def _expire(self, now: float) -> None:
        # Saved grants leave when old or when there are too many; pending ones never do
        # (they are the only copy), so a store with more than KEPT_MAX pending keeps them.
        # Oldest first, stopping at the first that may stay: O(what leaves), not O(kept) per
        # call (a copy of every grant per refresh made a keepalive quadratic).
        excess = len(self._grants) - KEPT_MAX
        leaving = []
        for user_id, grant in self._grants.items():
            if excess <= 0 and now - grant.kept_at < KEPT_FOR:
                break
            if not grant.pending:
                leaving.append(user_id)
                excess -= 1
        for user_id in leaving:
            self._remove(user_id)
