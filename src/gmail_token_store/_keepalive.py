"""refresh-all: the keepalive that uses every due or idle grant, with bounded concurrency.

Google drops refresh tokens unused for six months; using them keeps them alive, and
refreshing ahead of expiry keeps services off the refresh path. Each row goes through
the same locked path as get_credentials, whose re-check under the lock refreshes only if
nobody wrote the row since the listing (or it is due): a row that a service or a second
keepalive run refreshed meanwhile is not refreshed twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ._record import TokenRecord
from ._results import TokenStatus
from ._store import TokenStore
from .exceptions import ReauthRequiredError, RefreshFailedError, TokenStoreError

DAY = 86_400


@dataclass
class KeepaliveReport:
    """What refresh-all did: counts, and the rows a person has to look at."""

    checked: int = 0
    due: int = 0
    processed: int = 0
    refreshed: int = 0
    still_valid: int = 0
    need_reauth: list[tuple[str, str]] = field(default_factory=list)  # (user, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)
    retry_later: list[tuple[str, str]] = field(default_factory=list)

    @property
    def needs_a_person(self) -> bool:
        return bool(self.need_reauth or self.failed)


def _label(status: TokenStatus) -> str:
    return f"{status.user_id} ({status.email})" if status.email else status.user_id


def is_due(status: TokenStatus, *, within: float, idle_days: float) -> bool:
    """True when the row's token expires within `within` s or it was not refreshed lately."""
    if status.remaining_seconds is None or status.remaining_seconds < within:
        return True
    return (
        status.seconds_since_refresh is not None and status.seconds_since_refresh > idle_days * DAY
    )


def refresh_all(
    store: TokenStore,
    *,
    within: float,
    idle_days: float,
    concurrency: int,
    progress: Callable[[KeepaliveReport], None] | None = None,
) -> KeepaliveReport:
    """Refresh every due or idle row, `concurrency` at a time; report what happened."""
    report = KeepaliveReport()
    listing = store._listing()
    report.checked = len(listing)
    due: list[tuple[TokenRecord, TokenStatus]] = []
    for record, status in listing:
        label = _label(status)
        if status.state == "broken":
            report.failed.append((label, status.problem or "the row is unusable"))
        elif status.state == "reauth-required":
            report.need_reauth.append((label, status.problem or "a new consent is needed"))
        elif is_due(status, within=within, idle_days=idle_days):
            due.append((record, status))
    report.due = len(due)
    lock = threading.Lock()

    def refresh_one(listed: tuple[TokenRecord, TokenStatus]) -> None:
        record, status = listed
        label = _label(status)
        try:
            result = store._refresh_unless_written_since(record)
        except ReauthRequiredError as exc:
            outcome = ("need_reauth", label, exc.reason)
        except RefreshFailedError as exc:
            outcome = ("retry_later" if exc.retryable else "failed", label, exc.reason)
        except TokenStoreError as exc:
            outcome = ("failed", label, str(exc))
        else:
            outcome = ("refreshed" if result.status == "refreshed" else "still_valid", label, "")
        with lock:
            kind, who, why = outcome
            report.processed += 1
            if kind == "refreshed":
                report.refreshed += 1
            elif kind == "still_valid":
                report.still_valid += 1
            else:
                getattr(report, kind).append((who, why))

    last_progress = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="refresh-all") as pool:
        for _ in pool.map(refresh_one, due):
            now = time.monotonic()
            if progress is not None and now - last_progress >= 2.0:
                last_progress = now
                progress(report)
    return report
