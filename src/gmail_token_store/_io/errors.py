"""What a driver error means for the caller: the one place psycopg and httpx errors are read.

Both shells catch `psycopg.Error` around every database effect and raise what
`database_error` / `connect_error` return, and turn an httpx error into what `unreachable`
returns, so no driver exception reaches a caller. The rules:

* the connection broke, timed out, was terminated, or landed on a read-only server (a
  standby, a demoted primary): `ConnectionLost`, a retryable `DatabaseUnavailableError`;
  the connection is discarded, and a statement that had not run may be retried once;
* the table or a column is missing, a privilege is lacking, the password, database or
  role is wrong, the DSN cannot be used: `ConfigurationError`, naming the cause;
* the row lock was not granted within lock_timeout: `LockWaitTimeout` (flows turn it into
  the error of the operation).

Server messages are untrusted text: they are escaped, and a DSN password never appears.
"""

from __future__ import annotations

import re

import httpx
import psycopg
import psycopg.errors

from .._core.errors import (
    ConfigurationError,
    ConnectionLost,
    DatabaseUnavailableError,
    LockWaitTimeout,
    TokenStoreError,
    WrongRowError,
)
from .._core.exchange import EndpointUnreachable
from .._core.text import printable
from .sql import TABLE

# SQLSTATE classes and codes after which the connection is not used again.
_LOST_CLASSES = ("08", "57", "53", "58", "XX")
_LOST_CODES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby or a demoted primary
        "25P03",  # idle_in_transaction_session_timeout
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55000",  # object_not_in_prerequisite_state (e.g. recovery in progress)
    }
)


def _summary(exc: psycopg.Error) -> str:
    """What went wrong, in words that cannot quote a value: a statement's error (it has a
    SQLSTATE) is named by its class, since the server's message and detail may quote the
    parameters (a token); a connection's error (no SQLSTATE) is libpq's first line."""
    if exc.sqlstate:
        return f"{type(exc).__name__}, SQLSTATE {printable(exc.sqlstate, 5)}"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return printable(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 160)


def database_error(  # noqa: PLR0911 - one return per kind of failure
    exc: psycopg.Error, privilege: str | None = None
) -> TokenStoreError:
    """Return the error to raise for a psycopg error raised by a statement that needs
    `privilege` on the table (None: a commit, or unknown)."""
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return LockWaitTimeout("the row lock was not granted in time")
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return ConfigurationError(
            f"the {TABLE} table does not exist in this database: create it with "
            "`gmail-token-store init-db` (or gmail_token_store.create_table)"
        )
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        detail = printable(exc.diag.message_primary or "a column is missing", 120)
        return ConfigurationError(
            f"the {TABLE} table lacks a column the store uses ({detail}); it must have the "
            "production schema (see `gmail-token-store init-db`)"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        if "row-level security" in (exc.diag.message_primary or ""):
            # The same words whether or not the row exists: no oracle for other services.
            return ConfigurationError(
                f"row-level security on {TABLE} does not let this database role write this "
                "user's grant (map the user to the role in the policy's table)"
            )
        privilege = privilege or "SELECT, INSERT, UPDATE"
        return ConfigurationError(
            f"the database role may not do this on {TABLE}: it needs the {privilege} "
            f"privilege (GRANT {privilege} ON {TABLE} TO <role>)"
        )
    sqlstate = exc.sqlstate or ""
    if (
        isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        or sqlstate in _LOST_CODES
        or sqlstate.startswith(_LOST_CLASSES)
    ):
        why = (
            "the server is read-only (a standby or a demoted primary)"
            if sqlstate == "25006"
            else _summary(exc)
        )
        return ConnectionLost(f"the database connection failed ({why}); retry later")
    return DatabaseUnavailableError(
        f"the database refused a statement ({_summary(exc)}); retry later"
    )


# libpq reports connection failures as text only (no SQLSTATE). The server's own words
# are English unless its lc_messages says otherwise; anything not recognised is retryable.
_REFUSED = (
    (re.compile(r'role "[^"]*" does not exist'), "the role (user) does not exist"),
    (re.compile(r'database "[^"]*" does not exist'), "the database does not exist"),
    (re.compile(r"password authentication failed"), "the password was refused"),
    (re.compile(r"no password supplied|password is required"), "the server wants a password"),
    (
        re.compile(r"(?:Ident|peer|GSSAPI|SSPI|certificate) authentication failed"),
        "authentication failed",
    ),
    (re.compile(r"pg_hba\.conf"), "the server's pg_hba.conf rejects this host, user or database"),
    (
        re.compile(r"SSL|sslmode|certificate", re.IGNORECASE),
        "the SSL settings do not match the server's",
    ),
    (
        re.compile(
            r"invalid (?:integer |URI |connection option|\w+ value)|missing \"=\""
            r"|unterminated quoted string|invalid port"
        ),
        "the DSN cannot be used",
    ),
)
_ROLE_OR_DB = re.compile(r'(role|database) "([^"]*)" does not exist')


def connect_error(exc: psycopg.Error, *, timeout: float, password: str | None) -> TokenStoreError:
    """Return the error to raise when opening a connection failed with `exc`."""
    text = str(exc)
    if password:
        text = text.replace(password, "***")
    if isinstance(exc, psycopg.ProgrammingError):  # e.g. a bad connect_timeout value
        return ConfigurationError(
            "the database DSN cannot be used (not shown: it may contain a password)"
        )
    for pattern, meaning in _REFUSED:
        if pattern.search(text):
            named = _ROLE_OR_DB.search(text)
            detail = f": {named.group(1)} {printable(named.group(2), 63)!r}" if named else ""
            return ConfigurationError(
                f"PostgreSQL refused the connection: {meaning}{detail}; fix the DSN "
                "(GMAIL_TOKEN_STORE_DSN / DATABASE_URL) or the server's settings"
            )
    if isinstance(exc, psycopg.errors.ConnectionTimeout) or "timeout expired" in text:
        return DatabaseUnavailableError(
            f"no database connection within {timeout:g} s (no answer); retry later"
        )
    return DatabaseUnavailableError(
        f"cannot connect to PostgreSQL ({_attempts(text)}); retry later"
    )


# What libpq says, per attempt, in words an operator reads at a glance.
_PLAIN = (
    ("Connection refused", "nothing is listening there"),
    ("read-only", "a read-only server (a standby?)"),
    ("hot standby", "a read-only server (a standby?)"),
    ("is starting up", "the server is starting up"),
    ("shutting down", "the server is shutting down"),
    ("too many clients", "the server has no connection slots left"),
    ("could not translate host name", "the host name does not resolve"),
)
_ATTEMPT = re.compile(
    r'connection to server at "([^"]*)"(?: \([^)]*\))?, port (\d+) failed: ([^\n]*)'
)


def _attempts(text: str) -> str:
    """One reason per host tried (a multi-host DSN tries each in turn)."""
    found = _ATTEMPT.findall(text)
    if not found:
        return _plain(text.strip().splitlines()[0] if text.strip() else "no reason given")
    reasons = [_plain(reason) for _host, _port, reason in found]
    if len(found) == 1:
        return reasons[0]
    each = (
        f"{printable(host, 63)}:{port}: {reason}"
        for (host, port, _), reason in zip(found, reasons, strict=True)
    )
    return "; ".join(dict.fromkeys(each))  # an address tried twice is said once


def _plain(reason: str) -> str:
    for needle, meaning in _PLAIN:
        if needle in reason:
            return meaning
    return printable(reason.strip(), 120)


def drop_traceback(exc: BaseException) -> None:
    """Forget where a failed connection attempt was raised.

    The frames of psycopg's connect() hold libpq's half-open connection: kept alive by a
    traceback (until garbage collection), its socket goes on retrying its SYN, and once a
    partition heals the server forks a backend for it that blocks its shutdown.
    """
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__context__  # type: ignore[assignment]


def expect_user(row: tuple[object, ...] | None, user_id: str | None) -> None:
    """Raise WrongRowError if `row` (selected with `sql.COLUMNS`) is not `user_id`'s."""
    if row is not None and user_id is not None and row[1] != user_id:
        raise WrongRowError(user_id)


def unreachable(exc: Exception) -> EndpointUnreachable:
    """What a shell throws into `exchange` when its HTTP client raised `exc`."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return EndpointUnreachable("the token endpoint did not answer in time", timed_out=True)
    return EndpointUnreachable("the token endpoint could not be reached", timed_out=False)
