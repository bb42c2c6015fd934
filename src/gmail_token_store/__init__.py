"""gmail_token_store: valid Gmail OAuth credentials straight from the gmail_token table.

from gmail_token_store import get_credentials
credentials = get_credentials(user_id, scopes=[GMAIL_SEND])
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from importlib.metadata import version as _version

from google.oauth2.credentials import Credentials

from ._record import GMAIL_SEND
from ._results import RefreshResult, TokenEvent, TokenStatus
from ._store import TokenStore
from .exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    InsufficientScopesError,
    InvalidTokenRecordError,
    InvalidUserIdError,
    OAuthClientError,
    ReauthRequiredError,
    RefreshFailedError,
    TokenNotFoundError,
    TokenStoreError,
)

__version__ = _version("gmail-token-store")

__all__ = [
    "GMAIL_SEND",
    "ConfigurationError",
    "DatabaseUnavailableError",
    "InsufficientScopesError",
    "InvalidTokenRecordError",
    "InvalidUserIdError",
    "OAuthClientError",
    "ReauthRequiredError",
    "RefreshFailedError",
    "RefreshResult",
    "TokenEvent",
    "TokenNotFoundError",
    "TokenStatus",
    "TokenStore",
    "TokenStoreError",
    "__version__",
    "get_credentials",
]

_default_store: TokenStore | None = None
_default_store_lock = threading.Lock()


def _shared_store() -> TokenStore:
    global _default_store  # noqa: PLW0603 - the one process-wide store, created on first use
    store = _default_store
    if store is None:
        with _default_store_lock:
            store = _default_store
            if store is None:
                store = _default_store = TokenStore.from_env()
                atexit.register(store.close)  # its pool's threads and connections
    return store


def get_credentials(user_id: object, *, scopes: Sequence[str] | None = None) -> Credentials:
    """Return valid Credentials for the user from a process-wide `TokenStore.from_env()`.

    The store is created on first use (thread-safe) from GMAIL_TOKEN_STORE_DSN or
    DATABASE_URL, and GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET. See
    `TokenStore.get_credentials` for the behaviour and the errors.
    """
    return _shared_store().get_credentials(user_id, scopes=scopes)
