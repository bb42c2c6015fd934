"""refresh-all: the keepalive that uses every due or idle grant, with bounded concurrency.

Google drops refresh tokens unused for six months; using them keeps them alive, and
refreshing ahead of expiry keeps services off the refresh path. Each row goes through the
store's public `refresh(..., unless_written_since=version)`: the locked path, refreshing
only if nobody wrote the row since the listing (or it is due), so a row that a service or
a second keepalive run refreshed meanwhile is not refreshed twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._escape import printable
from ._results import RefreshResult, TokenStatus
from .exceptions import ReauthRequiredError, RefreshFailedError, TokenStoreError

if TYPE_CHECKING:
    from ._async_store import AsyncTokenStore
    from ._store import TokenStore

DAY = 86_400
#: Seconds between two progress reports.
_PROGRESS_EVERY = 2.0


@dataclass
class KeepaliveReport:
    """What refresh-all did: counts, and the rows a person has to look at.

    The lists hold (who, why) pairs: the user id (and email) and the reason, escaped.
    """

    checked: int = 0
    due: int = 0
    processed: int = 0
    refreshed: int = 0
    still_valid: int = 0
    need_reauth: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    retry_later: list[tuple[str, str]] = field(default_factory=list)

    @property
    def needs_a_person(self) -> bool:
        return bool(self.need_reauth or self.failed)


def label(status: TokenStatus) -> str:
    """The user id, and the email (escaped and cut) when known."""
    return f"{status.user_id} ({printable(status.email, 80)})" if status.email else status.user_id


def is_due(status: TokenStatus, *, within: float, idle_days: float) -> bool:
    """True when the row's token expires within `within` s or it was not refreshed lately."""
    if status.remaining_seconds is None or status.remaining_seconds < within:
        return True
    return (
        status.seconds_since_refresh is not None and status.seconds_since_refresh > idle_days * DAY
    )


def plan(
    statuses: list[TokenStatus], *, within: float, idle_days: float
) -> tuple[KeepaliveReport, list[TokenStatus]]:
    """The report so far (rows that need a person) and the rows to refresh."""
    report = KeepaliveReport(checked=len(statuses))
    due: list[TokenStatus] = []
    for status in statuses:
        if status.state == "broken":
            report.failed.append(
                (label(status), printable(status.problem or "the row is unusable"))
            )
        elif status.state == "reauth-required":
            report.need_reauth.append(
                (label(status), printable(status.problem or "a new consent is needed"))
            )
        elif is_due(status, within=within, idle_days=idle_days):
            due.append(status)
    report.due = len(due)
    return report, due


def _tally(
    report: KeepaliveReport, status: TokenStatus, outcome: RefreshResult | Exception
) -> None:
    who = label(status)
    report.processed += 1
    if isinstance(outcome, RefreshResult):
        if outcome.status == "refreshed":
            report.refreshed += 1
        else:
            report.still_valid += 1
    elif isinstance(outcome, ReauthRequiredError):
        report.need_reauth.append((who, printable(outcome.reason)))
    elif isinstance(outcome, RefreshFailedError):
        (report.retry_later if outcome.retryable else report.failed).append(
            (who, printable(outcome.reason))
        )
    else:
        report.failed.append((who, printable(str(outcome))))


def refresh_all(
    store: TokenStore,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Callable[[KeepaliveReport], None] | None = None,
) -> KeepaliveReport:
    """Refresh every due or idle row, `concurrency` threads at a time; report what happened."""
    report, due = plan(store.check_all(), within=within, idle_days=idle_days)
    lock = threading.Lock()

    def refresh_one(status: TokenStatus) -> None:
        outcome: RefreshResult | Exception
        try:
            outcome = store.refresh(status.user_id, unless_written_since=status.version)
        except TokenStoreError as exc:
            outcome = exc
        with lock:
            _tally(report, status, outcome)

    last_progress = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="refresh-all") as pool:
        for _ in pool.map(refresh_one, due):
            now = time.monotonic()
            if progress is not None and now - last_progress >= _PROGRESS_EVERY:
                last_progress = now
                progress(report)
    return report


async def refresh_all_async(
    store: AsyncTokenStore, *, within: float, idle_days: float, concurrency: int
) -> KeepaliveReport:
    """The same on an event loop: at most `concurrency` refreshes in flight."""
    report, due = plan(await store.check_all(), within=within, idle_days=idle_days)
    gate = asyncio.Semaphore(concurrency)

    async def refresh_one(status: TokenStatus) -> None:
        outcome: RefreshResult | Exception
        async with gate:
            try:
                outcome = await store.refresh(status.user_id, unless_written_since=status.version)
            except TokenStoreError as exc:
                outcome = exc
        _tally(report, status, outcome)

    tasks: list[Awaitable[None]] = [refresh_one(status) for status in due]
    await asyncio.gather(*tasks)
    return report
