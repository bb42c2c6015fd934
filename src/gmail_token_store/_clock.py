"""The database's clock, as seen from this host: one offset, learnt from reads we make anyway.

Hosts disagree about the time; the database is the one clock every host talks to. Each
read returns `statement_timestamp()`, and the local clock is read before and after it: the
database's time lies within that interval, so `db - (sent + received) / 2` is the offset
with an error of at most half the round trip. The sample with the shortest round trip in
the last few minutes is the best one; a newer sample replaces it when it is about as good
or the best one has aged (clocks drift, and a stepped host clock must be followed).
"""

from __future__ import annotations

from ._effects import ClockSample

#: A best sample older than this (seconds) is replaced by the next one, whatever its RTT.
_SAMPLE_LIFETIME = 300.0


class DatabaseClock:
    """Converts between this host's clock and the database's (epoch seconds)."""

    __slots__ = ("_rtt", "_taken", "offset")

    def __init__(self) -> None:
        #: database time minus local time, in seconds (0 until the first read).
        self.offset = 0.0
        self._rtt = float("inf")
        self._taken = float("-inf")

    def observe(self, sample: ClockSample) -> None:
        """Learn from one read: keep the sample with the shortest round trip (see above)."""
        rtt = sample.received - sample.sent
        if rtt < 0:  # the local clock stepped back during the read: not a usable sample
            return
        if rtt <= self._rtt * 2 or sample.received - self._taken > _SAMPLE_LIFETIME:
            self.offset = sample.db_now - (sample.sent + sample.received) / 2
            self._rtt = min(rtt, self._rtt) if rtt <= self._rtt * 2 else rtt
            self._taken = sample.received

    def db_now(self, local_now: float) -> float:
        """The database's time when the local clock says `local_now`."""
        return local_now + self.offset

    def to_local(self, db_time: float) -> float:
        """The local clock's reading when the database's clock says `db_time`."""
        return db_time - self.offset
