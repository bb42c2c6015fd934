"""What a store reports to the service besides results: events, their kinds, the hook.

The core emits them (`effects.Emit`); a shell logs the message and calls the hook
(`_io.events.announce`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, get_args

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


#: What `TokenEvent.error` (and `RefreshFailedError.cause`) names: a fixed set, so that it
#: can label a metric. The words of the failure are in `TokenEvent.message`.
EventError = Literal[
    "invalid_grant",  # the grant is dead: the user must consent again
    "invalid_client",  # the OAuth client was refused (also: unauthorized_client, ...)
    "unauthorized_client",
    "deleted_client",
    "rejected",  # another refusal by the token endpoint (e.g. invalid_scope)
    "timeout",  # the token endpoint did not answer in time
    "unreachable",  # the token endpoint could not be reached
    "server_error",  # 5xx, or an error code Google calls passing
    "rate_limited",  # 429
    "bad_answer",  # an answer that is not JSON, too long, or without a token
    "lock_timeout",  # another process held the row lock too long
    "busy",  # another thread's refresh took too long, or the row kept changing
    "unsaved",  # a refreshed grant could not be written yet: it is kept in memory
]
EVENT_ERRORS: frozenset[str] = frozenset(get_args(EventError))


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Something a service may want to count: a refresh, a stale serve, a failure.

    `duration` is the seconds the operation took; `error` names the failure from a fixed
    set (`EventError`: "invalid_grant", "timeout", "lock_timeout", ...), fit for a metric
    label; `message` says what happened in words (escaped; it may be long). Never a secret.
    """

    kind: EventKind
    user_id: str
    email: str | None
    duration: float
    error: EventError | None = None
    message: str = ""


class EventHook(Protocol):
    """Receives every TokenEvent; must be fast and must not raise (errors are logged)."""

    def __call__(self, event: TokenEvent, /) -> None: ...
