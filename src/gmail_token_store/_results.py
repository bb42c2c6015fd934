"""What the store hands back besides Credentials: check and refresh results, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from google.oauth2.credentials import Credentials

TokenState = Literal[
    "ok", "refresh-due", "expired", "reauth-required", "broken", "idle", "not-found"
]

#: States that need a person (the user or an operator), not just the next refresh.
ATTENTION_STATES: frozenset[str] = frozenset({"reauth-required", "broken", "idle"})


def mask(token: str | None) -> str:
    """Return a short prefix of a token for display; never enough to use it."""
    if not token:
        return "None"
    return f"'{token[:6]}…'" if len(token) >= 24 else "'…'"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """Health of one user's grant; `to_dict()` is a superset of auth-server's check response."""

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
        }


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """Outcome of `TokenStore.refresh`; `to_dict()` has auth-server's refresh response keys."""

    status: Literal["valid", "refreshed"]
    user_id: str
    email: str | None
    expires_in: int
    expiry: datetime
    access_token: str = field(repr=False)
    credentials: Credentials = field(repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"RefreshResult(status={self.status!r}, user_id={self.user_id!r}, "
            f"email={self.email!r}, expires_in={self.expires_in}, "
            f"access_token={mask(self.access_token)})"
        )

    def to_dict(self, *, include_token: bool = True) -> dict[str, Any]:
        """Return auth-server's refresh response; `include_token=False` leaves the token out."""
        data: dict[str, Any] = {
            "status": self.status,
            "user_id": self.user_id,
            "email": self.email,
            "expires_in": self.expires_in,
        }
        if include_token:
            data["access_token"] = self.access_token
        return data


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
