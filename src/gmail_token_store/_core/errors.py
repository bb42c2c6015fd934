"""The error tree callers see (drawn in `gmail_token_store.exceptions`), and the signals
the shells throw into the flows.

The errors are decisions, so they live with the decisions: plain standard-library
exceptions whose messages the core composes, escaped. The shells translate what their
drivers raise (psycopg, httpx) into these, in one place each (`_io.errors`); nothing else
crosses from a driver to a caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from .events import EventError
from .text import BadUserId, canonical_user_id, describe_user, printable

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


class TokenStoreError(Exception):
    """Base class of every error this library raises on purpose."""

    #: True when the same call may succeed later without anybody doing anything.
    retryable: bool = False


class InvalidUserIdError(TokenStoreError, ValueError):
    """The user id is not a UUID (None, an int, SQL text, ...); nothing was queried."""


def parse_user_id(value: object) -> str:
    """Return the canonical lower-case text form of a UUID user id (see `canonical_user_id`).

    Raises:
        InvalidUserIdError: (a ValueError) for anything else, before any query runs.
    """
    try:
        return canonical_user_id(value)
    except BadUserId as exc:
        raise InvalidUserIdError(str(exc)) from None


class ConfigurationError(TokenStoreError):
    """An operator must fix the setup: the DSN, a password, the database or role, the table,
    a column or a privilege; the message names which."""


class MissingKeyError(ConfigurationError):
    """The user's row is sealed with a key this store does not have (`key_id` names it):
    add that key to the store's keys (`GMAIL_TOKEN_STORE_KEYS`). Other rows still work."""

    def __init__(self, user_id: str, email: str | None, key_id: str) -> None:
        super().__init__(
            f"the Gmail grant of {describe_user(user_id, email)} is sealed with key "
            f"{printable(key_id)}, which this store does not have; add key "
            f"{printable(key_id)} to the store's keys (GMAIL_TOKEN_STORE_KEYS)"
        )
        self.user_id = user_id
        self.email = email
        self.key_id = key_id


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
    """The refresh did not happen for a passing reason; the same call may work later.

    `reason` says why in words (untrusted text from the endpoint may be in it); `cause`
    names it from a fixed set (`EventError`: "timeout", "server_error", "lock_timeout",
    "busy", ...), fit for a metric label.
    """

    def __init__(
        self,
        user_id: str,
        email: str | None,
        reason: str,
        *,
        retryable: bool = True,
        cause: EventError = "server_error",
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
        self.cause: EventError = cause


# --- signals: what a shell throws into a flow (never raised to a caller as they are) -------


class ConnectionLost(DatabaseUnavailableError):
    """The connection broke or cannot be used; it was discarded. Retry later."""


class WrongRowError(ConnectionLost):
    """A statement answered with another user's row: the connection is not trusted again."""

    def __init__(self, user_id: str) -> None:
        super().__init__(
            f"the database connection answered a row that is not user {user_id}'s; the "
            "connection was discarded and nothing was handed out (retry)"
        )


class LockWaitTimeout(TokenStoreError):
    """Another transaction held the row lock for longer than this call may wait."""

    retryable = True


class FlightTimeout(Exception):
    """This caller waited longer than `Shared.wait` for the refresh already running."""


class LeaderInterrupted(Exception):
    """The refresh this caller waited for was interrupted (KeyboardInterrupt, cancellation).

    The interrupt belongs to the thread or task it was delivered to; a waiter gets this
    instead and tries again itself.
    """
