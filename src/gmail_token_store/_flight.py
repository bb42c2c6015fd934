"""In-process single flight: threads asking to refresh the same user share one refresh."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class FlightTimeoutError(Exception):
    """A follower waited longer than its timeout for the leader."""


class SingleFlight(Generic[T]):
    """Run at most one `fn` per key at a time; concurrent callers share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}

    def run(
        self, key: str, fn: Callable[[], T], *, wait: bool, timeout: float
    ) -> tuple[T | None, bool]:
        """Return (result, led).

        The first caller for `key` runs `fn` and gets (its result, True). Later callers
        wait up to `timeout` seconds and get (the same result, False), or the same
        exception raised; with `wait=False` they get (None, False) at once instead.

        Raises:
            FlightTimeoutError: a follower's wait ran out.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if not wait:
                return None, False
            if not flight.done.wait(max(timeout, 0.0)):
                raise FlightTimeoutError(key)
            if flight.error is not None:
                raise flight.error
            return flight.result, False
        try:
            flight.result = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result, True
