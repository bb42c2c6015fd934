"""What the decision core asks a shell to do: a closed union of small, typed values.

The flows (`flows`, `refresh`, `exchange`) are generators. They yield an effect and get its
result back, or have the error thrown in; a shell (`_io.sync_shell`, `_io.async_shell`)
performs each effect, the way psycopg's connections drive its protocol generators. A flow
writes ``rows = yield from Query(...)``: every effect's `__iter__` yields the effect itself
and returns its result with the effect's own result type, so mypy checks what each step
receives. The shells dispatch on `Effect` with an exhaustive `match` ending in
`assert_never`: a shell that forgets an effect is a type error.

The effects are pitched where the shells stop repeating themselves: statements are named
(`Statement`; their SQL and the privileges they need are the shell's, in `_io.sql`), and a
shell maps driver errors and releases connections for all database effects in one place.
The time is not an effect: the core reads its injected `Clock`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from .clock import ClockSample
from .errors import ConnectionLost
from .events import EventError, EventKind

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Row: TypeAlias = tuple[Any, ...]


class Statement(enum.Enum):
    """A statement a flow runs; `_io.sql` holds its SQL (one entry per member, checked)."""

    CHECK_ROW = "check_row"  # one row, with the database's local time (idleness)
    READ_ROW = "read_row"  # one row (as the hot path reads it, outside a transaction)
    WRITE_GRANT = "write_grant"  # a refreshed grant, into the row this transaction locked
    WRITE_GRANT_IF_VERSION = "write_grant_if_version"  # the same, by compare-and-set
    RECORD_FAILURE = "record_failure"  # a dead grant (invalid_grant) into metadata
    UPSERT_GRANT = "upsert_grant"  # a new consent or an import
    INSERT_GRANT = "insert_grant"  # a first consent, unless someone else's came first
    TABLE_EXISTS = "table_exists"
    CREATE_TABLE = "create_table"
    FIND_BY_ACCOUNT = "find_by_account"  # rows naming a Google account id (RISC)
    FIND_BY_TOKEN_PREFIX = "find_by_token_prefix"  # rows whose refresh token starts so
    FIND_BY_TOKEN_HASH = "find_by_token_hash"  # rows whose refresh token hashes so
    CLAIM_NOTICE = "claim_notice"  # a notice into metadata, by compare-and-set
    MARK_NOTICE = "mark_notice"  # that notice sent, or failed
    PAGE_ROWS = "page_rows"  # the rows after an id, a page of them (keyset)
    ROWS_BY_ID = "rows_by_id"  # some rows, by id
    WHOLE_PAGE = "whole_page"  # whole rows after an id, for a rewrite (the reseal)
    TOKEN_URIS = "token_uris"  # the distinct token URIs rows name
    SIEVED_PAGE = "sieved_page"  # a page of rows, those of no interest only counted
    RESEAL_ROWS = "reseal_rows"  # rows' secrets sealed, re-sealed or unsealed, by compare-and-set


# --- database ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowRead:
    """A row read with the database's clock (`row` None: no such row, or SKIP LOCKED)."""

    row: Row | None = field(repr=False)
    clock: ClockSample | None
    #: Whether the row's expiry column is a timestamptz (decides how expiries are written).
    expiry_has_time_zone: bool = False
    #: Read from a standby (`read_conninfo`): perhaps behind the primary; its clock is not
    #: the primary's.
    standby: bool = False


@dataclass(frozen=True, slots=True)
class ReadRow:
    """The hot path: the user's row and the database clock, in autocommit; from a standby
    when the store has `read_conninfo` (the primary when the standby does not answer)."""

    user_id: str

    def __iter__(self) -> Generator[Effect, Any, RowRead]:
        result: RowRead = yield self
        return result


@dataclass(frozen=True, slots=True)
class Query:
    """Run one statement on a pooled connection in autocommit; result: its rows.

    `user_id`, when given, is the only user a returned row may belong to: a row for anyone
    else is an error and the connection is discarded (never a token handed out).
    """

    statement: Statement
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    user_id: str | None = None

    def __iter__(self) -> Generator[Effect, Any, list[Row]]:
        rows: list[Row] = yield self
        return rows


@dataclass(frozen=True, slots=True)
class LockRow:
    """Open the flow's transaction and lock the user's row (`FOR NO KEY UPDATE`).

    One round trip: BEGIN, transaction-local `lock_timeout` (`wait_ms`) and
    `idle_in_transaction_session_timeout` (`idle_timeout_ms`), the lock. `wait_ms=None`
    only tries it (SKIP LOCKED): no row comes back if another transaction holds it.
    """

    user_id: str
    wait_ms: int | None
    idle_timeout_ms: int
    #: Why the lock is taken: "refresh" or "save" (the shell names the privilege needed).
    purpose: str = "refresh"

    def __iter__(self) -> Generator[Effect, Any, RowRead]:
        result: RowRead = yield self
        return result


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement in the flow's open transaction; with `commit`, commit it and give
    the connection back. Result: its rows."""

    statement: Statement
    params: Mapping[str, Any] = field(repr=False)
    user_id: str | None = None
    commit: bool = False

    def __iter__(self) -> Generator[Effect, Any, list[Row]]:
        rows: list[Row] = yield self
        return rows


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the flow's transaction and give its connection back."""

    def __iter__(self) -> Generator[Effect, Any, None]:
        yield self


# --- token endpoint ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PostForm:
    """POST a form; result: `HttpAnswer`, or `exchange.EndpointUnreachable` thrown in."""

    url: str
    form: Mapping[str, str] = field(repr=False)
    timeout: float
    #: Read at most this many bytes of the answer (one more tells the core it was longer).
    max_bytes: int

    def __iter__(self) -> Generator[Effect, Any, HttpAnswer]:
        answer: HttpAnswer = yield self
        return answer


@dataclass(frozen=True, slots=True)
class Deliver:
    """POST `body` (JSON) with `headers` to a webhook; result: the HTTP status, or
    `exchange.EndpointUnreachable` thrown in. The answer's body is not read."""

    url: str
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    timeout: float

    def __iter__(self) -> Generator[Effect, Any, int]:
        status: int = yield self
        return status


# --- waiting, telling, sharing -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float

    def __iter__(self) -> Generator[Effect, Any, None]:
        yield self


@dataclass(frozen=True, slots=True)
class Emit:
    """Log `message` and report one TokenEvent (see `_events.announce`)."""

    kind: EventKind
    user_id: str
    email: str | None
    started: float  # monotonic seconds when the operation began
    error: EventError | None = None
    level: int = 20  # logging.INFO
    message: str = ""

    def __iter__(self) -> Generator[Effect, Any, None]:
        yield self


@dataclass(frozen=True, slots=True)
class Log:
    """Write one line to the library's logger."""

    level: int
    message: str

    def __iter__(self) -> Generator[Effect, Any, None]:
        yield self


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the user's credentials from the store's cache."""

    user_id: str

    def __iter__(self) -> Generator[Effect, Any, None]:
        yield self


@dataclass(frozen=True, slots=True)
class Shared(Generic[T]):
    """Run `flow()` at most once at a time per key in this process; result: (value, led).

    A caller that finds `flow` running for the key waits for it (at most `wait` seconds)
    and gets its result with led=False; with `wait=None` it gets (None, False) at once.
    Errors thrown in: `FlightTimeout`, `LeaderInterrupted`, or the leader's own error.
    """

    key: str
    flow: Callable[[], Flow[T]]
    wait: float | None

    def __iter__(self) -> Generator[Effect, Any, tuple[T | None, bool]]:
        result: tuple[T | None, bool] = yield self
        return result


#: Every effect a flow may yield; a shell handles each (exhaustive `match`).
Effect: TypeAlias = (
    ReadRow
    | Query
    | LockRow
    | Execute
    | Commit
    | PostForm
    | Deliver
    | Sleep
    | Emit
    | Log
    | Forget
    | Shared[Any]
)
#: The effects that use the database: a shell runs them with one error mapping.
DatabaseEffect: TypeAlias = ReadRow | Query | LockRow | Execute | Commit
#: A flow: yields effects, receives their results, returns a T.
Flow: TypeAlias = Generator[Effect, Any, T]


class _Performable(Protocol[T_co]):
    def __iter__(self) -> Generator[Effect, Any, T_co]: ...


def once_more_if_lost(effect: _Performable[T]) -> Flow[T]:
    """Perform a database effect; once more, on a fresh connection, if the connection broke
    (a server restart, a failover). Only for effects that had not changed anything yet:
    a read, or a lock (nothing was sent to the token endpoint before it)."""
    try:
        return (yield from effect)
    except ConnectionLost as lost:
        yield from Log(logging.INFO, f"database connection lost ({lost}); retrying once")
        return (yield from effect)
