"""refresh-all for both stores: the plan of `_core.keepalive`, run with bounded concurrency.

The twins differ only in how they wait: a thread pool for `TokenStore`, a semaphore on the
event loop for `AsyncTokenStore`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from ._core.errors import TokenStoreError
from ._core.keepalive import KeepaliveReport, plan, tally
from ._core.status import TokenStatus
from ._results import RefreshResult

#: Seconds between two progress reports.
_PROGRESS_EVERY = 2.0

Progress = Callable[[KeepaliveReport], None]


class _Store(Protocol):
    """What refresh-all uses of a TokenStore: its public listing and refresh."""

    def check_all(self) -> list[TokenStatus]: ...

    def refresh(self, user_id: str, *, unless_written_since: str | None) -> RefreshResult: ...


class _AsyncStore(Protocol):
    """The same of an AsyncTokenStore."""

    async def check_all(self) -> list[TokenStatus]: ...

    async def refresh(self, user_id: str, *, unless_written_since: str | None) -> RefreshResult: ...


def refresh_all(
    store: _Store,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Progress | None = None,
) -> KeepaliveReport:
    """Refresh every due or idle row, `concurrency` threads at a time; report what happened."""
    report, due = plan(store.check_all(), within=within, idle_days=idle_days)
    lock = threading.Lock()
    last_progress = time.monotonic()

    def refresh_one(status: TokenStatus) -> None:
        nonlocal last_progress
        outcome: RefreshResult | Exception
        try:
            outcome = store.refresh(status.user_id, unless_written_since=status.version)
        except TokenStoreError as exc:
            outcome = exc
        with lock:
            tally(report, status, outcome)
            now = time.monotonic()
            if progress is not None and now - last_progress >= _PROGRESS_EVERY:
                last_progress = now
                progress(report)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="refresh-all") as pool:
        for _ in pool.map(refresh_one, due):
            pass
    return report


async def refresh_all_async(
    store: _AsyncStore,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Progress | None = None,
) -> KeepaliveReport:
    """The same on an event loop: at most `concurrency` refreshes in flight."""
    report, due = plan(await store.check_all(), within=within, idle_days=idle_days)
    gate = asyncio.Semaphore(concurrency)
    last_progress = time.monotonic()

    async def refresh_one(status: TokenStatus) -> None:
        nonlocal last_progress
        outcome: RefreshResult | Exception
        async with gate:
            try:
                outcome = await store.refresh(status.user_id, unless_written_since=status.version)
            except TokenStoreError as exc:
                outcome = exc
        tally(report, status, outcome)
        now = time.monotonic()
        if progress is not None and now - last_progress >= _PROGRESS_EVERY:
            last_progress = now
            progress(report)

    tasks: list[Awaitable[None]] = [refresh_one(status) for status in due]
    await asyncio.gather(*tasks)
    return report
