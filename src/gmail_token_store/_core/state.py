"""The decision state one store carries: windows, policy, kept grants, the clocks.

A store (sync or async) owns one Core and drives the flows in `flows` against it. Nothing
here does I/O; the time comes from the injected `Clock`.

Who writes what, and why no lock is needed beyond the ones named (flows run in many
threads at once, and in the coroutines of any number of event loops):

* `kept` (KeptGrants) guards its grants and its flush schedule with its own lock;
* `db_clock` replaces its best sample in one assignment (see `DatabaseClock`);
* `policy` remembers verdicts in a dict; each entry is a pure function of its key, so a
  race writes the same value twice (and the clearing of a full dict loses only memos);
* `_read` (the hot path's last parse per user) is a dict read and written in single
  operations; an entry is a pure function of the row's columns it is checked against, so
  a race only parses a row twice (and clearing a full dict loses only memos);
* `expiry_has_time_zone` is set by every lock from what the database reports for the
  table's expiry column: every writer writes the same value for the same table;
* everything else is set in `__init__` (or `after_fork`, in a child, before any thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .clock import SYSTEM_CLOCK, Clock, DatabaseClock
from .kept import KeptGrants
from .policy import TokenUriPolicy
from .record import (
    CANONICAL,
    NO_CLIENT,
    ROW_COLUMNS,
    OAuthClient,
    TokenRecord,
    listed_record,
    parse_row,
)
from .sealing import Sealer
from .windows import Windows

#: How many users' last reads `Core.parse_read` remembers (then it starts again).
READ_MEMOS = 1024


class _Columns(tuple[Any, ...]):
    """A row's columns as read, its secrets among them (repr: how many, never what)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} columns of a row>"


class Core:
    """Everything a store decides with, shared by the sync and the async shell."""

    def __init__(
        self,
        *,
        windows: Windows,
        http_timeout: float,
        allowed_token_hosts: Iterable[str] = (),
        allow_loopback_token_uri: bool = False,
        fallback_client: OAuthClient = NO_CLIENT,
        clock: Clock = SYSTEM_CLOCK,
        sealer: Sealer | None = None,
    ) -> None:
        self.windows = windows
        self.http_timeout = http_timeout
        self.policy = TokenUriPolicy(allowed_token_hosts, allow_loopback=allow_loopback_token_uri)
        self.fallback_client = fallback_client
        self.clock = clock
        #: Opens sealed rows and, when it seals, seals what the store writes (or None).
        self.sealer = sealer
        self.db_clock = DatabaseClock()
        self.kept = KeptGrants()
        #: Whether the table's expiry column is a timestamptz; learnt from the first lock.
        self.expiry_has_time_zone = False
        #: The hot path's last parse per user: (the row's columns, its record).
        self._read: dict[str, tuple[_Columns, TokenRecord]] = {}

    def parse(self, row: Sequence[Any]) -> TokenRecord:
        return parse_row(row, fallback_client=self.fallback_client, sealer=self.sealer)

    def parse_read(self, row: Sequence[Any]) -> TokenRecord:
        """`parse` for the hot path's read: the record of a row whose columns are exactly
        those it last read for that user (the database's clock aside) is the one it made
        then, not made again (a record is never changed once made). A row refreshed, or
        changed in any byte, is parsed afresh; a record with a problem is never kept."""
        columns = _Columns(row[:ROW_COLUMNS])
        memo = self._read.get(row[1])
        if memo is not None and memo[0] == columns:
            return memo[1]
        record = self.parse(row)
        if record.problem is None:  # (a broken row, a key a KMS failed to open: again)
            if len(self._read) >= READ_MEMOS:
                self._read.clear()
            self._read[row[1]] = (columns, record)
        return record

    def parse_listed(self, row: Sequence[Any]) -> TokenRecord:
        """A row of a listing statement: canonical ones without decoding their JSON."""
        if len(row) > CANONICAL and row[CANONICAL]:
            return listed_record(row)  # (its client is its own: no fallback)
        return self.parse(row[:13])

    def db_now(self) -> float:
        """The database's time now, by this host's clock and the learnt offset."""
        return self.db_clock.db_now(self.clock.time())

    def after_fork(self) -> None:
        """In a child process: the parent keeps its own grants (see `KeptGrants`)."""
        self.kept.after_fork()
