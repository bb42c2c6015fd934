"""What the store hands back besides Credentials: refresh results and events (the check
result, `TokenStatus`, is the core's: `_core.status`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from google.oauth2.credentials import Credentials

from ._core.events import EventError, EventHook, EventKind, TokenEvent
from ._core.status import ATTENTION_STATES, TokenState, TokenStatus
from ._core.text import mask

__all__ = [
    "ATTENTION_STATES",
    "EventError",
    "EventHook",
    "EventKind",
    "RefreshResult",
    "TokenEvent",
    "TokenState",
    "TokenStatus",
]


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
