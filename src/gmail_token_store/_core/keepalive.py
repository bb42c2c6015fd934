"""refresh-all's decisions: which rows to refresh, and what each outcome means. No I/O.

Google drops refresh tokens unused for six months; using them keeps them alive, and
refreshing ahead of expiry keeps services off the refresh path. The stores run the plan
(`_keepalive`): each row goes through the public `refresh(..., unless_written_since=
version)`, so a row that a service or a second run refreshed meanwhile is not refreshed
twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ReauthRequiredError, RefreshFailedError, TokenStoreError
from .status import TokenStatus
from .text import printable

DAY = 86_400


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
    #: Due rows another run (or a service) was refreshing when this one came: left to it.
    taken: int = 0
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
    # (An expired token counts whatever `within` says: remaining_seconds is 0 for it, so
    # `--within 0` would otherwise pick nothing.)
    if status.remaining_seconds is None or status.is_expired or status.remaining_seconds < within:
        return True
    return (
        status.seconds_since_refresh is not None and status.seconds_since_refresh > idle_days * DAY
    )


def triage(
    report: KeepaliveReport, status: TokenStatus, *, within: float, idle_days: float
) -> bool:
    """Note a row that needs a person in the report; True when the row is to be refreshed."""
    if status.state == "broken":
        report.failed.append((label(status), printable(status.problem or "the row is unusable")))
        return False
    if status.state == "reauth-required":
        report.need_reauth.append(
            (label(status), printable(status.problem or "a new consent is needed"))
        )
        return False
    if is_due(status, within=within, idle_days=idle_days):
        report.due += 1
        return True
    return False


def tally(report: KeepaliveReport, status: TokenStatus, outcome: object) -> None:
    """Count one row's outcome: a `RefreshResult`-like object with `.status`, an error, or
    None (another run or a service held the row: it is refreshing it)."""
    who = label(status)
    report.processed += 1
    if outcome is None:
        report.taken += 1
    elif isinstance(outcome, ReauthRequiredError):
        report.need_reauth.append((who, printable(outcome.reason)))
    elif isinstance(outcome, RefreshFailedError):
        (report.retry_later if outcome.retryable else report.failed).append(
            (who, printable(outcome.reason))
        )
    elif isinstance(outcome, TokenStoreError) and outcome.retryable:
        # The database did not answer in time, say: the next run refreshes it.
        report.retry_later.append((who, printable(str(outcome))))
    elif isinstance(outcome, Exception):
        report.failed.append((who, printable(str(outcome))))
    elif getattr(outcome, "status", None) == "refreshed":
        report.refreshed += 1
    else:
        report.still_valid += 1
