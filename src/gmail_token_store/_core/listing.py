"""Table-wide reads in flat memory: pages of statuses, a sieve, and the table's summary.

A listing walks the table in pages by id (keyset: each page is one statement, nothing is
held open between them, memory holds one page). Every row's state is decided by `status.
classify`, here as anywhere.

The sieve makes the commands that only need the rows a person must look at (`metrics`,
`list --needs-attention`, `refresh-all`) near the speed of SQL: each page's statement
marks the rows that are *provably* of no interest, counts them in SQL and sends only the
others. "Provably" is the point: `SIEVED_PAGE`'s predicate (`_io.sql`) holds only for a
row whose parse cannot find a problem and whose state is `ok` (and, for the keepalive,
that is not due within `margin` nor idle for `idle`):

* every JSON column is small, uncompressed and of the kind the parse wants (an object,
  or an array of strings): under 512 bytes of jsonb cannot nest 64 deep nor print 64 KiB,
  so `record.parse_row` cannot refuse it as too deep or too long;
* the access token, the refresh token, the client id and secret are non-empty strings
  where the parse looks first; no `sealed` value (a seal must be opened to be trusted), no
  recorded refresh failure at all (even for another refresh token);
* the token URI the parse will compute is one the store's policy allows (`sieve` asks the
  table for its distinct token URIs first and the policy decides);
* the expiry and `updated_at` are finite, before year 10000, and at least `margin` ahead
  of / `idle` behind the database's clocks of that very statement, with a second to spare
  for float rounding.

Anything else (a NULL, an odd type, a legacy layout, a sealed row) makes the predicate
false and the row is classified here: the sieve can only send more rows than needed, never
fewer. `tests/test_listing.py` checks it against hostile rows and every state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from .effects import Flow, Query, Statement, once_more_if_lost
from .record import MAX_COLUMN_CHARS
from .state import Core
from .status import ATTENTION_STATES, IDLE_AFTER, TokenState, TokenStatus, classify

#: The states a row can be in; "not-found" is not a row's.
ROW_STATES: tuple[str, ...] = tuple(state for state in get_args(TokenState) if state != "not-found")
#: A row not written for this long is idle (`status.IDLE_AFTER`), in seconds.
IDLE_SECONDS = IDLE_AFTER.total_seconds()
#: At most this many distinct token URIs are checked by the policy; rows naming others
#: pass the sieve (they are classified one by one).
MAX_TOKEN_URIS = 1000
#: Seconds given away at each time bound: a float rounding can never hide a row.
SLACK = 1.0
#: The columns of a listed row (`_io.sql._LISTED`): a read's 13, `canonical` and the 6
#: fields SQL extracted (`record.listed_record`).
LISTED_WIDTH = 20

assert MAX_COLUMN_CHARS >= 6 * 512  # noqa: S101 - what the sieve's size bound relies on


@dataclass
class TableSummary:
    """The table's health in counts, over every row (what `metrics` exports).

    `states` counts rows by state (every state, zeros included); `earliest_expiry_seconds`
    is the least time left on any access token (0: one has expired) and
    `newest_refresh_age_seconds` the time since any row was last written, by the
    database's clocks; `sealed` counts rows by the key they are sealed with.
    """

    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_STATES, 0))
    earliest_expiry_seconds: int | None = None
    newest_refresh_age_seconds: int | None = None
    sealed: dict[str, int] = field(default_factory=dict)
    plaintext: int = 0

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def needs_attention(self) -> int:
        return sum(self.states[state] for state in ATTENTION_STATES)

    def add(self, status: TokenStatus) -> None:
        """Count one row's status."""
        if status.status != "found":
            return
        self.states[status.state] = self.states.get(status.state, 0) + 1
        if status.key_id is None:
            self.plaintext += 1
        else:
            self.sealed[status.key_id] = self.sealed.get(status.key_id, 0) + 1
        self._expiry(status.remaining_seconds)
        self._age(status.seconds_since_refresh)

    def add_ok(self, count: int, earliest_left: float | None, newest_age: float | None) -> None:
        """Count `count` plaintext rows the sieve proved `ok` (seconds as the statuses'
        would be: whole, time left never below 0)."""
        if not count:
            return
        self.states["ok"] += count
        self.plaintext += count
        if earliest_left is not None:
            self._expiry(max(int(earliest_left), 0))
        if newest_age is not None:
            self._age(int(newest_age))

    def _expiry(self, seconds: int | None) -> None:
        if seconds is not None and (
            self.earliest_expiry_seconds is None or seconds < self.earliest_expiry_seconds
        ):
            self.earliest_expiry_seconds = seconds

    def _age(self, seconds: int | None) -> None:
        if seconds is not None and (
            self.newest_refresh_age_seconds is None or seconds < self.newest_refresh_age_seconds
        ):
            self.newest_refresh_age_seconds = seconds


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a walk: the statuses it yields, and where the next page starts
    (`last_id` None: the table ended)."""

    statuses: list[TokenStatus]
    last_id: int | None


@dataclass(frozen=True, slots=True)
class Sieve:
    """What the sieve lets go: rows `ok`, not due within `margin` s, written within `idle`
    s, naming one of `token_uris` (which the policy allows)."""

    margin: float
    idle: float
    token_uris: tuple[str, ...]

    def params(self, after: int, limit: int) -> dict[str, Any]:
        return {
            "after": after,
            "limit": limit,
            "margin": self.margin + SLACK,
            "idle": self.idle - SLACK,
            "token_uris": list(self.token_uris),
        }


def _status(core: Core, row: Sequence[Any]) -> TokenStatus:
    return classify(
        core.parse_listed(row),
        db_now=row[11],
        db_local_now=row[12],
        windows=core.windows,
        policy=core.policy,
    )


def page(core: Core, *, after: int, limit: int) -> Flow[Page]:
    """The statuses of the (at most `limit`) rows after id `after`, in id order."""
    rows = yield from once_more_if_lost(
        Query(Statement.PAGE_ROWS, {"after": after, "limit": limit})
    )
    return Page([_status(core, row) for row in rows], rows[-1][0] if len(rows) == limit else None)


def needs_attention(status: TokenStatus) -> bool:
    return status.needs_attention


def sieve(core: Core, *, margin: float, idle: float = IDLE_SECONDS) -> Flow[Sieve]:
    """The sieve for this table: its token URIs, those the store's policy allows kept."""
    rows = yield from once_more_if_lost(Query(Statement.TOKEN_URIS, {"limit": MAX_TOKEN_URIS}))
    allowed = tuple(
        uri for (uri,) in rows if isinstance(uri, str) and core.policy.refusal(uri) is None
    )
    return Sieve(margin=margin, idle=idle, token_uris=allowed)


def sieved_page(
    core: Core, sieve: Sieve, summary: TableSummary, *, after: int, limit: int
) -> Flow[Page]:
    """The statuses of the rows after id `after` (a page of `limit` rows walked) that the
    sieve did not prove of no interest; those it did are counted into `summary` (the
    statuses returned are not: the caller counts what it keeps)."""
    rows = yield from once_more_if_lost(Query(Statement.SIEVED_PAGE, sieve.params(after, limit)))
    counted = rows[-1]  # the page's tally of the rows let go, and its last id
    clock, local_now = counted[11:13]
    count, earliest, newest, last_id = counted[LISTED_WIDTH:]
    summary.add_ok(
        count,
        earliest - clock if earliest is not None else None,
        local_now - newest if newest is not None else None,
    )
    statuses = [_status(core, row) for row in rows[:-1]]
    return Page(
        statuses, last_id if last_id is not None and count + len(statuses) == limit else None
    )
