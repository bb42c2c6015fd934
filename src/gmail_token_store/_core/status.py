"""A row's health, classified: the states `check`, `list` and the alert report. No I/O.

`TokenStatus` is the result type; `classify` the one place a row's state is decided.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from .policy import TokenUriPolicy, unusable_because
from .record import TokenRecord, epoch
from .windows import Windows

TokenState = Literal[
    "ok", "refresh-due", "expired", "reauth-required", "broken", "idle", "not-found"
]

#: States that need a person (the user or an operator), not just the next refresh.
ATTENTION_STATES: frozenset[str] = frozenset({"reauth-required", "broken", "idle"})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# Not frozen: a frozen dataclass sets each of its 25 fields through object.__setattr__,
# 6x the cost of building it (a listing builds one per row, the API one per check).
# Treat it as read-only all the same: statuses from the cache are shared.
@dataclass(slots=True)
class TokenStatus:
    """Health of one user's grant; `to_dict()` is a superset of auth-server's check response.

    Read-only by convention (not frozen, for speed; not hashable)."""

    status: Literal["found", "not_found"]
    user_id: str
    state: TokenState
    email: str | None = None
    robeing_id: str | None = None
    has_token: bool = False
    has_access_token: bool = False
    has_refresh_token: bool = False
    has_oauth_config: bool = False
    is_expired: bool = False
    remaining_seconds: int | None = None
    needs_refresh: bool = False
    needs_reauth: bool = False
    #: What is wrong with the row, in words, when state is broken or reauth-required.
    problem: str | None = None
    #: The permanent refresh failure recorded for the stored refresh token, if any.
    last_error: dict[str, str] | None = None
    expiry: datetime | None = None
    #: `updated_at` of the row: the last refresh or save by any writer.
    last_refreshed: datetime | None = None
    #: Seconds since `last_refreshed`, by the database's clock.
    seconds_since_refresh: int | None = None
    scopes: tuple[str, ...] | None = None
    #: The row's version when it was read (opaque; changes with every write). Pass it to
    #: `refresh(..., unless_written_since=...)` to refresh only a row nobody touched since.
    version: str | None = None
    #: Whether a consent verified the Google account of the grant (its ID token), and
    #: which account it was (`sub`); False for imports and other writers' grants.
    account_verified: bool = False
    google_account_id: str | None = None
    #: When the user consented, by a verified consent's record (naive UTC).
    consented_at: datetime | None = None
    #: The key the row's secrets are sealed with (`gmail_token_store.keys`); None: plaintext.
    key_id: str | None = None

    @property
    def needs_attention(self) -> bool:
        """True when a person has to act (re-consent, fix the row, or start the keepalive)."""
        return self.state in ATTENTION_STATES

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: auth-server's keys first, then ours. No secrets."""
        return {
            "status": self.status,
            "user_id": self.user_id,
            "email": self.email,
            "has_token": self.has_token,
            "has_access_token": self.has_access_token,
            "has_refresh_token": self.has_refresh_token,
            "has_oauth_config": self.has_oauth_config,
            "is_expired": self.is_expired,
            "remaining_seconds": self.remaining_seconds,
            "needs_refresh": self.needs_refresh,
            "state": self.state,
            "needs_reauth": self.needs_reauth,
            "needs_attention": self.needs_attention,
            "problem": self.problem,
            "last_error": self.last_error,
            "robeing_id": self.robeing_id,
            "expiry": _iso(self.expiry),
            "last_refreshed": _iso(self.last_refreshed),
            "seconds_since_refresh": self.seconds_since_refresh,
            "scopes": list(self.scopes) if self.scopes is not None else None,
            "version": self.version,
            "account_verified": self.account_verified,
            "google_account_id": self.google_account_id,
            "consented_at": _iso(self.consented_at),
            "key_id": self.key_id,
        }


#: A grant not refreshed for this long is close to Google's 6-month unused-token rule.
IDLE_AFTER = timedelta(days=150)


def classify(
    record: TokenRecord,
    *,
    db_now: float,
    db_local_now: float,
    windows: Windows,
    policy: TokenUriPolicy,
) -> TokenStatus:
    """Classify one row.

    Args:
        db_now: the database's clock (epoch seconds) when the row was read.
        db_local_now: the database's LOCALTIMESTAMP then, in epoch seconds taken nominally
            like `updated_at`'s: every writer writes `updated_at` in the server's zone, so
            idleness is measured in it.
    """
    left = record.seconds_left(db_now)
    problem = unusable_because(record, policy)
    reauth = record.reauth_reason if problem is None else None
    since_refresh = (
        timedelta(seconds=db_local_now - epoch(record.updated_at))
        if record.updated_at is not None
        else None
    )
    state: TokenState
    if problem:
        state = "broken"
    elif reauth:
        state = "reauth-required"
    elif since_refresh is not None and since_refresh > IDLE_AFTER:
        state = "idle"
    elif left <= 0:
        state = "expired"
    elif left < windows.refresh_margin:
        state = "refresh-due"
    else:
        state = "ok"
    failure = record.failure
    return TokenStatus(
        status="found",
        user_id=record.user_id,
        state=state,
        email=record.email,
        robeing_id=record.robeing_id,
        has_token=bool(record.access_token or record.refresh_token),
        has_access_token=bool(record.access_token),
        has_refresh_token=bool(record.refresh_token),
        has_oauth_config=record.client_in_row,
        is_expired=left <= 0,
        remaining_seconds=max(int(left), 0) if math.isfinite(left) else None,
        needs_refresh=left < windows.refresh_margin,
        needs_reauth=reauth is not None,
        problem=problem or reauth,
        last_error=dataclasses.asdict(failure) if failure else None,
        expiry=record.expiry,
        last_refreshed=record.updated_at,
        seconds_since_refresh=(
            int(since_refresh.total_seconds()) if since_refresh is not None else None
        ),
        scopes=record.scopes,
        version=record.version,
        account_verified=record.google_account_id is not None,
        google_account_id=record.google_account_id,
        consented_at=record.consented_at,
        key_id=record.key_id,
    )


def not_found(user_id: str) -> TokenStatus:
    return TokenStatus(status="not_found", user_id=user_id, state="not-found")
