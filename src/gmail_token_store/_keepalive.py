"""refresh-all for both stores: the table streamed through the keepalive's sieve, each due
row refreshed with bounded concurrency, the rows another run holds left to it.

Memory holds one page of rows and at most a few due rows per worker, whatever the table's
size. The twins differ only in how they wait: a thread pool for `TokenStore`, a semaphore
on the event loop for `AsyncTokenStore`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ._core.errors import TokenStoreError
from ._core.keepalive import DAY, KeepaliveReport, is_due, tally, triage
from ._core.listing import IDLE_SECONDS, TableSummary
from ._core.status import TokenStatus
from ._results import RefreshResult

#: Seconds between two progress reports.
_PROGRESS_EVERY = 2.0
#: Due rows queued per worker ahead of the listing (memory stays flat, workers stay busy).
_AHEAD = 4

Progress = Callable[[KeepaliveReport], None]


#: The keepalive's refresh of one row: its result, or None when another run holds it.
Refresh = Callable[[str, str | None], RefreshResult | None]
AsyncRefresh = Callable[[str, str | None], Awaitable[RefreshResult | None]]


def sieve_bounds(refresh_margin: float, within: float, idle_days: float) -> dict[str, float]:
    """The sieve's bounds for the keepalive: a row it lets go is `ok` and not due (so the
    summary's `ok` count stays right even when `within` is below the refresh margin)."""
    return {"margin": max(within, refresh_margin), "idle": min(idle_days * DAY, IDLE_SECONDS)}


def wanted(within: float, idle_days: float) -> Callable[[TokenStatus], bool]:
    """Which sieved rows the keepalive looks at: those a person must fix, and the due."""

    def keep(status: TokenStatus) -> bool:
        return status.state in ("broken", "reauth-required") or is_due(
            status, within=within, idle_days=idle_days
        )

    return keep


def refresh_all(
    statuses: Iterator[TokenStatus],
    summary: TableSummary,
    refresh: Refresh,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Progress | None = None,
) -> KeepaliveReport:
    """Refresh every due or idle row of `statuses` (the sieved walk that fills `summary`),
    `concurrency` threads at a time; report what happened."""
    report = KeepaliveReport()
    lock = threading.Lock()
    last_progress = time.monotonic()

    def refresh_one(status: TokenStatus) -> None:
        nonlocal last_progress
        outcome: RefreshResult | Exception | None
        try:
            outcome = refresh(status.user_id, status.version)
        except TokenStoreError as exc:
            outcome = exc
        with lock:
            tally(report, status, outcome)
            now = time.monotonic()
            if progress is not None and now - last_progress >= _PROGRESS_EVERY:
                last_progress = now
                progress(report)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="refresh-all") as pool:
        running: set[Future[None]] = set()
        for status in statuses:
            with lock:
                due = triage(report, status, within=within, idle_days=idle_days)
            if not due:
                continue
            running.add(pool.submit(refresh_one, status))
            if len(running) >= concurrency * _AHEAD:
                _, running = wait(running, return_when=FIRST_COMPLETED)
        for future in running:
            future.result()
    report.checked = summary.total
    return report


async def refresh_all_async(
    statuses: AsyncIterator[TokenStatus],
    summary: TableSummary,
    refresh: AsyncRefresh,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Progress | None = None,
) -> KeepaliveReport:
    """The same on an event loop: at most `concurrency` refreshes in flight."""
    report = KeepaliveReport()
    gate = asyncio.Semaphore(concurrency)
    last_progress = time.monotonic()

    async def refresh_one(status: TokenStatus) -> None:
        nonlocal last_progress
        outcome: RefreshResult | Exception | None
        try:
            outcome = await refresh(status.user_id, status.version)
        except TokenStoreError as exc:
            outcome = exc
        finally:
            gate.release()
        tally(report, status, outcome)
        now = time.monotonic()
        if progress is not None and now - last_progress >= _PROGRESS_EVERY:
            last_progress = now
            progress(report)

    running: set[asyncio.Task[None]] = set()
    async for status in statuses:
        if not triage(report, status, within=within, idle_days=idle_days):
            continue
        await gate.acquire()  # at most `concurrency` in flight; the listing waits meanwhile
        task = asyncio.ensure_future(refresh_one(status))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)
    report.checked = summary.total
    return report
