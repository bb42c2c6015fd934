"""Time: the clock a store is given, and the database's clock as seen from this host.

The core never reads a clock of its own: a store injects a `Clock` (botocore's
`time_fetcher`), so the decisions can be driven by a scripted clock in tests.

Hosts disagree about the time; the database is the one clock every host talks to. Each
read returns `statement_timestamp()`, and the local clock is read before and after it: the
database's time lies within that interval, so `db - (sent + received) / 2` is the offset
with an error of at most half the round trip. The sample with the shortest round trip in
the last few minutes is the best one; a newer sample replaces it when it is about as good
or the best one has aged (clocks drift, and a stepped host clock must be followed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

#: A best sample older than this (seconds) is replaced by the next one, whatever its RTT.
_SAMPLE_LIFETIME = 300.0


class Clock(Protocol):
    """Where the core gets the time: wall seconds since the epoch, and monotonic seconds."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The host's clocks (`time.time`, `time.monotonic`)."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True, slots=True)
class ClockSample:
    """The database's clock read by a statement, and the local clock around it."""

    db_now: float  # epoch seconds, the database's statement_timestamp()
    sent: float  # local epoch seconds before the statement was sent
    received: float  # ... and after its answer arrived


class DatabaseClock:
    """Converts between this host's clock and the database's (epoch seconds).

    Threads observe samples concurrently without a lock: the best sample is one tuple,
    replaced by a single assignment (atomic in CPython), so a reader never sees the
    offset of one sample with the round trip of another. Two samples observed at once may
    both win; either is a good sample.
    """

    __slots__ = ("_best",)

    def __init__(self) -> None:
        #: (offset: database time minus local time, round trip, when taken); the offset is
        #: 0 until the first read.
        self._best: tuple[float, float, float] = (0.0, float("inf"), float("-inf"))

    @property
    def offset(self) -> float:
        """Database time minus local time, in seconds."""
        return self._best[0]

    def observe(self, sample: ClockSample) -> None:
        """Learn from one read: keep the sample with the shortest round trip (see above)."""
        rtt = sample.received - sample.sent
        if rtt < 0:  # the local clock stepped back during the read: not a usable sample
            return
        _, best_rtt, taken = self._best
        if rtt <= best_rtt * 2 or sample.received - taken > _SAMPLE_LIFETIME:
            offset = sample.db_now - (sample.sent + sample.received) / 2
            self._best = (
                offset,
                min(rtt, best_rtt) if rtt <= best_rtt * 2 else rtt,
                sample.received,
            )

    def db_now(self, local_now: float) -> float:
        """The database's time when the local clock says `local_now`."""
        return local_now + self._best[0]

    def to_local(self, db_time: float) -> float:
        """The local clock's reading when the database's clock says `db_time`."""
        return db_time - self._best[0]
