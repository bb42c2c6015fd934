"""Errors raised by gmail_token_store, one class per thing a caller does differently.

::

    TokenStoreError                      base; .retryable tells "just try again later"
    ├── InvalidUserIdError (ValueError)  the caller passed something that is not a UUID
    ├── ConfigurationError               operator: DSN, credentials, database, role, table,
    │                                    column or privilege is wrong or missing
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
text that came from the database or the token endpoint is escaped (`_escape.printable`),
so a message is safe to print on a terminal or in a one-line log.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._escape import printable

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "InsufficientScopesError",
    "InvalidTokenRecordError",
    "InvalidUserIdError",
    "OAuthClientError",
    "ReauthRequiredError",
    "RefreshFailedError",
    "TokenNotFoundError",
    "TokenStoreError",
]


def describe_user(user_id: str, email: str | None) -> str:
    """Return "user <id>" or "user <id> (<email>)" for messages, escaped and cut."""
    return f"user {user_id} ({printable(email, 80)})" if email else f"user {user_id}"


class TokenStoreError(Exception):
    """Base class of every error this library raises on purpose."""

    #: True when the same call may succeed later without anybody doing anything.
    retryable: bool = False


class InvalidUserIdError(TokenStoreError, ValueError):
    """The user id is not a UUID (None, an int, SQL text, ...); nothing was queried."""


class ConfigurationError(TokenStoreError):
    """An operator must fix the setup: the DSN, a password, the database or role, the table,
    a column or a privilege; the message names which."""


class DatabaseUnavailableError(TokenStoreError):
    """PostgreSQL could not be reached or dropped the connection; retry later."""

    retryable = True


class _UserError(TokenStoreError):
    """An error about one user's grant; carries the user id and email."""

    def __init__(self, message: str, *, user_id: str, email: str | None = None) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.email = email


class TokenNotFoundError(_UserError):
    """No row in gmail_token for this user: they have to connect their Gmail account."""

    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"no Gmail grant stored for {describe_user(user_id, None)}: "
            "the user has to connect Gmail (run the consent flow, e.g. "
            "`gmail-token-store authorize`)",
            user_id=user_id,
        )


class InvalidTokenRecordError(_UserError):
    """The stored row cannot be used as it is; an operator has to fix or replace it."""

    def __init__(self, user_id: str, email: str | None, problem: str) -> None:
        super().__init__(
            f"the Gmail grant of {describe_user(user_id, email)} cannot be used: "
            f"{printable(problem)}; "
            "an operator has to fix the row or re-authorize the user",
            user_id=user_id,
            email=email,
        )
        self.problem = problem


class ReauthRequiredError(_UserError):
    """The grant is dead (revoked, expired, no refresh token): the user must consent again."""

    def __init__(self, user_id: str, email: str | None, reason: str) -> None:
        super().__init__(
            f"the Gmail grant of {describe_user(user_id, email)} needs a new consent: "
            f"{printable(reason)}; "
            "ask the user to re-authorize (e.g. `gmail-token-store authorize`)",
            user_id=user_id,
            email=email,
        )
        self.reason = reason


class InsufficientScopesError(_UserError):
    """The stored grant lacks scopes the caller needs (a login consent cannot send mail)."""

    def __init__(self, user_id: str, email: str | None, missing_scopes: Sequence[str]) -> None:
        missing = printable(", ".join(missing_scopes))
        super().__init__(
            f"the Gmail grant of {describe_user(user_id, email)} lacks the scope(s) {missing}; "
            "ask the user to re-authorize with them (the 'passport' consent, e.g. "
            "`gmail-token-store authorize --scopes ...`)",
            user_id=user_id,
            email=email,
        )
        self.missing_scopes = tuple(missing_scopes)


class OAuthClientError(_UserError):
    """Google refused the OAuth client itself (invalid, unauthorized or deleted client)."""

    def __init__(self, user_id: str, email: str | None, error: str, description: str) -> None:
        detail = f"{error}: {description}" if description else error
        super().__init__(
            f"the token endpoint refused the OAuth client used for "
            f"{describe_user(user_id, email)} ({printable(detail)}); an operator has to fix the "
            "client id "
            "and secret (gmail_token.oauth_config or GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET)",
            user_id=user_id,
            email=email,
        )
        self.error = error


class RefreshFailedError(_UserError):
    """The refresh did not happen for a passing reason; the same call may work later."""

    def __init__(
        self, user_id: str, email: str | None, reason: str, *, retryable: bool = True
    ) -> None:
        advice = "retry later" if retryable else "an operator has to look at the token endpoint"
        super().__init__(
            f"could not refresh the Gmail token of {describe_user(user_id, email)}: "
            f"{printable(reason)}; "
            f"{advice}",
            user_id=user_id,
            email=email,
        )
        self.reason = reason
        self.retryable = retryable
