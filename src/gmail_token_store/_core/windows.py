"""When to serve a token, when to refresh it, and how long a caller may wait: no I/O, no clock.

Every function takes the database's time (`db_now`, seconds since the epoch) as an
argument, so that every host judges a token by the same clock and the rules can be tested
without PostgreSQL. The windows, counted back from a token's expiry (botocore's advisory
and mandatory refresh, in our terms)::

    ... fresh ......|.... advisory window ....|.. mandatory ..|  expired
                refresh_margin      mandatory_refresh_margin  0

* fresh: served as it is;
* advisory window: one caller refreshes (the row lock is only *tried*, SKIP LOCKED), every
  other caller, in any process, keeps using the still-valid token at once;
* mandatory window and expired: callers wait for the refresh, a bounded time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .record import TokenRecord

#: A caller holding a still-valid token waits for another caller's refresh at most until
#: its own token has this many seconds left, and is then served that token: enough for
#: the Gmail call it is about to make.
STALE_SAFETY_MARGIN = 5.0
#: Slack for the database round trips of a refresh, on top of the lock wait and the
#: token request budget, when threads of one process wait for the thread refreshing.
ROUND_TRIP_SLACK = 5.0
#: The server frees the row of a refresher that vanished mid-refresh (its host died without
#: closing the socket) this long after the whole refresh should have ended.
IDLE_TRANSACTION_SLACK = 15.0


class Plan(enum.Enum):
    """What to do with a token that was just read."""

    SERVE = "serve"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class Windows:
    """A store's refresh windows and waits, in seconds (see the module docstring)."""

    refresh_margin: float
    mandatory_margin: float
    lock_timeout: float
    #: The longest a whole token request may take, retries and backoff included.
    refresh_budget: float

    def plan(self, record: TokenRecord, db_now: float) -> Plan:
        left = record.seconds_left(db_now)
        return Plan.SERVE if left >= self.refresh_margin else Plan.REFRESH

    def is_due(self, record: TokenRecord, db_now: float) -> bool:
        return record.seconds_left(db_now) < self.refresh_margin

    def lock_wait(self, left: float) -> float | None:
        """Seconds to wait for the row lock with `left` seconds of token; None: only try.

        An expired token waits `lock_timeout`. A token in the advisory window never
        waits. A token in the mandatory window waits until it would have only
        STALE_SAFETY_MARGIN left (at most `lock_timeout`), and is then served as it is.
        """
        if left <= 0:
            return self.lock_timeout
        if left > self.mandatory_margin:
            return None
        budget = left - STALE_SAFETY_MARGIN
        return min(self.lock_timeout, budget) if budget > 0 else None

    def follower_wait(self, left: float) -> float | None:
        """Seconds a thread waits for another thread of this process refreshing the same user.

        None: do not wait, keep the current token (the same rule as `lock_wait`).
        """
        wait = self.lock_wait(left)
        if wait is None:
            return None
        full = self.lock_timeout + self.refresh_budget + ROUND_TRIP_SLACK
        return full if left <= 0 else min(full, left - STALE_SAFETY_MARGIN)

    @property
    def idle_in_transaction_timeout(self) -> float:
        """Server-side bound on a refresh transaction (see IDLE_TRANSACTION_SLACK)."""
        return self.refresh_budget + IDLE_TRANSACTION_SLACK


def still_valid(record: TokenRecord, db_now: float) -> bool:
    """May this token still be served after a refresh failed? (It has not expired.)"""
    return record.seconds_left(db_now) > 0
