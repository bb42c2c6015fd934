"""Single flight: callers of one process asking to refresh the same user share one refresh.

`SingleFlight` is for threads, `AsyncSingleFlight` for coroutines of one event loop. A
waiter gets the leader's result, or its error if that is an ordinary exception. An
interrupt (KeyboardInterrupt, SystemExit, a task's cancellation) belongs to the thread or
task it was delivered to: waiters get `LeaderInterrupted` instead and try again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .._core.errors import FlightTimeout, LeaderInterrupted

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """Run at most one `fn` per key at a time among threads; others share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}

    def run(self, key: str, fn: Callable[[], T], *, wait: float | None) -> tuple[T | None, bool]:
        """Return (result, led).

        The first caller for `key` runs `fn` and gets (its result, True). Later callers
        wait up to `wait` seconds and get (the same result, False), or the same error;
        with `wait=None` they get (None, False) at once instead.

        Raises:
            FlightTimeout: a waiter's wait ran out.
            LeaderInterrupted: the leader was interrupted.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if wait is None:
                return None, False
            if not flight.done.wait(max(wait, 0.0)):
                raise FlightTimeout(key)
            if flight.error is not None:
                raise flight.error
            return flight.result, False
        try:
            flight.result = fn()
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:
            flight.error = LeaderInterrupted(key)
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result, True


class AsyncSingleFlight(Generic[T]):
    """The same for coroutines of one event loop."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}

    async def run(
        self, key: str, fn: Callable[[], Awaitable[T]], *, wait: float | None
    ) -> tuple[T | None, bool]:
        """As `SingleFlight.run`; a waiter's own cancellation does not touch the leader."""
        flight = self._flights.get(key)
        if flight is not None:
            if wait is None:
                return None, False
            try:
                # shield: a waiter that is cancelled (or times out) leaves the leader alone.
                result = await asyncio.wait_for(asyncio.shield(flight), max(wait, 0.0))
            except TimeoutError:
                raise FlightTimeout(key) from None
            return result, False
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        try:
            result = await fn()
        except Exception as exc:
            flight.set_exception(exc)
            raise
        except BaseException:
            flight.set_exception(LeaderInterrupted(key))
            raise
        else:
            flight.set_result(result)
            return result, True
        finally:
            del self._flights[key]
            if flight.done() and not flight.cancelled():
                flight.exception()  # retrieved: no "exception was never retrieved" warning
