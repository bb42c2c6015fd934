"""What the store hands back besides Credentials: refresh results and events (the check
result, `TokenStatus`, is the core's: `_core.status`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from google.oauth2.credentials import Credentials

from ._core.events import EventError, EventHook, EventKind, TokenEvent
from ._core.listing import TableSummary
from ._core.status import ATTENTION_STATES, TokenState, TokenStatus
from ._core.text import mask

__all__ = [
    "ATTENTION_STATES",
    "AsyncStatusStream",
    "EventError",
    "EventHook",
    "EventKind",
    "RefreshResult",
    "StatusStream",
    "TableSummary",
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


class StatusStream(Iterator[TokenStatus]):
    """The statuses of `TokenStore.iter_statuses()`, one page of rows in memory at a time.

    `summary` counts every row of the table (also those not yielded); it is complete once
    the stream is exhausted (`complete`). Rows are read page by page, each page as of its
    own statement: a row written meanwhile may show its old or its new state. `close()`
    stops early (a `for` loop left by `break` does not need it: nothing stays open between
    pages).
    """

    def __init__(self, statuses: Iterator[TokenStatus], summary: TableSummary) -> None:
        self._statuses = statuses
        self.summary = summary
        self.complete = False

    def __iter__(self) -> StatusStream:
        return self

    def __next__(self) -> TokenStatus:
        try:
            return next(self._statuses)
        except StopIteration:
            self.complete = True
            raise

    def close(self) -> None:
        close = getattr(self._statuses, "close", None)
        if close is not None:
            close()


class AsyncStatusStream(AsyncIterator[TokenStatus]):
    """The same for `AsyncTokenStore.iter_statuses()`: `async for status in stream`."""

    def __init__(self, statuses: AsyncIterator[TokenStatus], summary: TableSummary) -> None:
        self._statuses = statuses
        self.summary = summary
        self.complete = False

    def __aiter__(self) -> AsyncStatusStream:
        return self

    async def __anext__(self) -> TokenStatus:
        try:
            return await anext(self._statuses)
        except StopAsyncIteration:
            self.complete = True
            raise

    async def aclose(self) -> None:
        aclose = getattr(self._statuses, "aclose", None)
        if aclose is not None:
            await aclose()
