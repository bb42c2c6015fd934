"""The decision state one store carries: settings, windows, policy, kept grants, the clock.

A store (sync or async) owns one Core and drives the flows in `_flows` against it. Nothing
here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from ._clock import DatabaseClock
from ._kept import KeptGrants
from ._options import Settings
from ._policy import TokenUriPolicy
from ._record import TokenRecord, parse_row

#: A mandatory window shorter than this is still treated as this long by handed-out
#: Credentials, so that google-auth refreshes them a little before the real end.
_MIN_HANDOUT_WINDOW = 10.0


class Core:
    """Everything a store decides with, shared by the sync and the async shell."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.windows = settings.windows
        self.policy = TokenUriPolicy(settings.allowed_token_hosts)
        self.kept = KeptGrants()
        self.clock = DatabaseClock()
        self.fallback_client = (settings.client_id, settings.client_secret)
        #: What handed-out Credentials count as expired / stale (see `_handout`).
        self.handout_windows = (
            timedelta(seconds=max(settings.mandatory_refresh_margin, _MIN_HANDOUT_WINDOW)),
            timedelta(seconds=settings.refresh_margin),
        )
        #: Whether the table's expiry column is a timestamptz; learnt from the first lock.
        self.expiry_has_time_zone = False
        #: Monotonic time before which pending kept grants are not tried again.
        self.next_flush = 0.0
        #: A kept grant could not be written because the database did not answer: the
        #: next successful read lifts `next_flush` (see `_flows.flush_kept`).
        self.kept_waits_for_database = False

    def parse(self, row: Sequence[Any]) -> TokenRecord:
        return parse_row(row, fallback_client=self.fallback_client)

    def after_fork(self) -> None:
        """In a child process: the parent keeps its own grants (see `KeptGrants`)."""
        self.kept.after_fork()
        self.next_flush = 0.0
        self.kept_waits_for_database = False
