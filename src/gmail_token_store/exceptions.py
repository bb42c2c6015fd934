"""Errors raised by gmail_token_store, one class per thing a caller does differently.

::

    TokenStoreError                      base; .retryable tells "just try again later"
    ├── InvalidUserIdError (ValueError)  the caller passed something that is not a UUID
    ├── ConfigurationError               operator: DSN, credentials, database, role, table,
    │   │                                column or privilege is wrong or missing
    │   └── MissingKeyError              the user's row is sealed with a key the store lacks
    ├── DatabaseUnavailableError         retry later: PostgreSQL unreachable, restarting,
    │                                    read-only, or the connection dropped (retryable)
    ├── TokenNotFoundError               the user never connected Gmail: ask them to
    ├── InvalidTokenRecordError          operator: unreadable row, no client, token_uri refused
    ├── ReauthRequiredError              the user must consent again (invalid_grant, no refresh)
    ├── InsufficientScopesError          the user must consent again, with the missing scope
    ├── OAuthClientError                 operator: the OAuth client is misconfigured or deleted
    └── RefreshFailedError               retry later: endpoint down, timeout, 5xx, 429, lock wait

Every message names the user id (and email when known) and what to do next. No message
contains an access token, a refresh token, a client secret or a database password, and
text that came from the database or the token endpoint is escaped, so a message is safe to
print on a terminal or in a one-line log. The classes are defined in `_core.errors`, with
the decisions that raise them.
"""

from __future__ import annotations

from ._core.errors import (
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

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "InsufficientScopesError",
    "InvalidTokenRecordError",
    "InvalidUserIdError",
    "MissingKeyError",
    "OAuthClientError",
    "ReauthRequiredError",
    "RefreshFailedError",
    "TokenNotFoundError",
    "TokenStoreError",
]
