"""What the decision core asks a store to do: one small value per kind of I/O.

The flows in `_flows` and `_refresh_flow` are generators: they yield one of these, and the
sync store (`_store`) or the async store (`_async_store`) performs it and sends the result
back (or throws the error in). The shells hold no logic of their own about freshness or
failures; they only know how to perform each effect, the way psycopg's connections drive
its protocol generators.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from psycopg import sql

from ._sql import REFRESH_PRIVILEGE, Statement

T = TypeVar("T")
#: A flow: yields effects, receives their results, returns a T.
Flow: TypeAlias = Generator[Any, Any, T]
Row: TypeAlias = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ClockSample:
    """The database's clock read by a statement, and the local clock around it."""

    db_now: float  # epoch seconds, the database's statement_timestamp()
    sent: float  # local epoch seconds before the statement was sent
    received: float  # ... and after its answer arrived


# --- database ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Run one statement on a pooled connection in autocommit; result: list of rows.

    `user_id`, when given, is the only user a returned row may belong to: a row for anyone
    else is an error and the connection is discarded (never a token handed out).
    """

    statement: Statement
    params: Sequence[Any] | Mapping[str, Any] = field(repr=False)
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReadRow:
    """The hot path: the user's row and the database clock; result: `RowRead`."""

    user_id: str


@dataclass(frozen=True, slots=True)
class RowRead:
    row: Row | None = field(repr=False)
    clock: ClockSample | None
    #: Whether the row's expiry column is a timestamptz (decides how expiries are written).
    expiry_has_time_zone: bool = False


@dataclass(frozen=True, slots=True)
class LockRow:
    """Open the flow's transaction and lock the user's row; result: `RowRead`.

    `statement` comes from `_sql.lock_row`. No row comes back when there is none or (SKIP
    LOCKED) when another transaction holds it.
    """

    user_id: str
    statement: sql.Composed
    #: What the lock needs (named in a permission error): `FOR NO KEY UPDATE` needs UPDATE.
    privilege: str = REFRESH_PRIVILEGE


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a statement in the flow's open transaction; result: list of rows."""

    statement: Statement
    params: Sequence[Any] | Mapping[str, Any] = field(repr=False)
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the flow's transaction and give its connection back; result: None."""


# --- token endpoint ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostForm:
    """POST a form; result: `HttpAnswer`, or `EndpointUnreachable` thrown in."""

    url: str
    form: Mapping[str, str] = field(repr=False)
    timeout: float
    #: Read at most this many bytes of the answer (one more tells the core it was longer).
    max_bytes: int


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes = field(repr=False)


# --- time, events, sharing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadClock:
    """Result: `LocalClock`."""


@dataclass(frozen=True, slots=True)
class LocalClock:
    wall: float  # time.time()
    monotonic: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Emit:
    """Log `message` and report one TokenEvent (see `_events.announce`); result: None."""

    kind: str
    user_id: str
    email: str | None
    started: float  # monotonic seconds when the operation began
    error: str | None = None
    level: int = 20  # logging.INFO
    message: str = ""


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the user's credentials from the store's cache; result: None."""

    user_id: str


@dataclass(frozen=True, slots=True)
class Log:
    """Write one line to the library's logger; result: None."""

    level: int
    message: str


@dataclass(frozen=True, slots=True)
class Shared:
    """Run `flow()` at most once at a time per key in this process; result: (value, led).

    A caller that finds `flow` running for the key waits for it (at most `wait` seconds)
    and gets its result with led=False; with `wait=None` it gets (None, False) at once.
    Errors thrown in: `FlightTimeout`, `LeaderInterrupted`, or the leader's own error.
    """

    key: str
    flow: Callable[[], Flow[Any]]
    wait: float | None


# --- what a store throws into a flow that waits on `Shared` ---------------------------


class FlightTimeout(Exception):
    """This caller waited longer than `Shared.wait` for the refresh already running."""


class LeaderInterrupted(Exception):
    """The refresh this caller waited for was interrupted (KeyboardInterrupt, cancellation).

    The interrupt belongs to the thread or task it was delivered to; a waiter gets this
    instead and tries again itself.
    """
