"""gmail_token_store: valid Gmail OAuth credentials straight from the gmail_token table.

    from gmail_token_store import GMAIL_SEND, get_credentials
    credentials = get_credentials(user_id, scopes=[GMAIL_SEND])

`TokenStore` for threads and forked workers, `AsyncTokenStore` for asyncio services; both
read the row, refresh it once under a row lock when it is due, and persist it.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from ._async_store import AsyncTokenStore
from ._core.keepalive import KeepaliveReport
from ._core.record import GMAIL_SEND
from ._core.reseal import ResealReport, ResealTarget
from ._default import create_table, get_credentials, get_credentials_async
from ._options import StoreOptions
from ._results import (
    AsyncStatusStream,
    EventError,
    EventHook,
    EventKind,
    RefreshResult,
    StatusStream,
    TableSummary,
    TokenEvent,
    TokenState,
    TokenStatus,
)
from ._store import TokenStore
from .exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    InsufficientScopesError,
    InvalidTokenRecordError,
    InvalidUserIdError,
    MissingKeyError,
    OAuthClientError,
    ReauthRequiredError,
    RefreshFailedError,
    TokenNotFoundError,
    TokenStoreError,
)

__version__ = _version("gmail-token-store")

__all__ = [
    "GMAIL_SEND",
    "AsyncStatusStream",
    "AsyncTokenStore",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "EventError",
    "EventHook",
    "EventKind",
    "InsufficientScopesError",
    "InvalidTokenRecordError",
    "InvalidUserIdError",
    "KeepaliveReport",
    "MissingKeyError",
    "OAuthClientError",
    "ReauthRequiredError",
    "RefreshFailedError",
    "RefreshResult",
    "ResealReport",
    "ResealTarget",
    "StatusStream",
    "StoreOptions",
    "TableSummary",
    "TokenEvent",
    "TokenNotFoundError",
    "TokenState",
    "TokenStatus",
    "TokenStore",
    "TokenStoreError",
    "__version__",
    "create_table",
    "get_credentials",
    "get_credentials_async",
]
