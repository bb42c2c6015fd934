"""A row's health, classified: the states `check`, `list` and the alert report. No I/O."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

from ._freshness import Windows
from ._policy import TokenUriPolicy, unusable_because
from ._record import TokenRecord
from ._results import TokenState, TokenStatus

#: A grant not refreshed for this long is close to Google's 6-month unused-token rule.
IDLE_AFTER = timedelta(days=150)


def classify(
    record: TokenRecord,
    *,
    db_now: float,
    db_local_now: datetime,
    windows: Windows,
    policy: TokenUriPolicy,
) -> TokenStatus:
    """Classify one row.

    Args:
        db_now: the database's clock (epoch seconds) when the row was read.
        db_local_now: the database's LOCALTIMESTAMP then; `updated_at` is written in the
            server's zone by every writer, so idleness is measured in it.
    """
    left = record.seconds_left(db_now)
    problem = unusable_because(record, policy)
    reauth = record.reauth_reason if problem is None else None
    since_refresh = db_local_now - record.updated_at if record.updated_at is not None else None
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
    )


def not_found(user_id: str) -> TokenStatus:
    return TokenStatus(status="not_found", user_id=user_id, state="not-found")
