"""What a store reports to the service besides results: events, their kinds, the hook.

The core emits them (`effects.Emit`); a shell logs the message and calls the hook
(`_io.events.announce`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

#: What a TokenEvent reports: a refresh; a still-valid token served after a failed refresh;
#: a dead grant; a failed refresh; a lock wait that ran out; a refreshed grant that could not
#: be written yet and is kept in memory; a kept grant written to the row later.
EventKind = Literal[
    "refreshed",
    "served_stale",
    "reauth_required",
    "refresh_failed",
    "lock_timeout",
    "grant_kept",
    "grant_restored",
]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Something a service may want to count: a refresh, a stale serve, a failure.

    `duration` is the seconds the operation took; `error` names the failure kind
    (for example "invalid_grant", "timeout", "lock_timeout"); never a secret.
    """

    kind: EventKind
    user_id: str
    email: str | None
    duration: float
    error: str | None = None


class EventHook(Protocol):
    """Receives every TokenEvent; must be fast and must not raise (errors are logged)."""

    def __call__(self, event: TokenEvent, /) -> None: ...
