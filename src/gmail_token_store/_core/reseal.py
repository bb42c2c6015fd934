"""Sealing a table in service: `encrypt-all`, `rotate-keys`, `decrypt-all`. No I/O.

The table is walked in pages by id (keyset: nothing is held open between pages, and a run
stopped anywhere is resumed by running it again). Each page's rows are rewritten by one
compare-and-set statement on their version (`xmin`): a row a service refreshed, or a
keepalive locked, meanwhile is not overwritten but read again and decided again, up to
`ATTEMPTS` times, then left for the next run. Only `token_data` and `oauth_config` change,
with the very secrets the row held: what the row means, its `updated_at` and every other
key are untouched. Two runs at once, or a run twice, rewrite each row at most once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .effects import Flow, Query, Sleep, Statement, once_more_if_lost
from .record import TokenRecord, fingerprint
from .sealing import Sealer, plain_columns, sealed_columns
from .state import Core
from .writes import UnwritableError, optional_json, to_json

#: seal: plaintext rows get sealed; rotate: rows sealed with another key than the sealing
#: one are sealed with it; unseal: sealed rows go back to plaintext.
ResealTarget = Literal["seal", "rotate", "unseal"]
#: Tries per row in one run before it is left for the next (it kept changing, or stayed
#: locked by a refresh).
ATTEMPTS = 4
#: The pause before trying again rows that changed or were locked (a refresh is short).
RETRY_PAUSE = 0.05


@dataclass(slots=True)
class ResealReport:
    """What a run did (and, page by page, has done so far)."""

    #: Rows seen, and rewritten by this run.
    rows: int = 0
    rewritten: int = 0
    #: Rows already as wanted (or holding no secret at all).
    unchanged: int = 0
    #: Plaintext rows `rotate` leaves as they are (`encrypt-all` seals them).
    plaintext: int = 0
    #: Rows this store cannot open, by the key they are sealed with: left as they are.
    missing_key: dict[str, int] = field(default_factory=dict)
    #: Rows whose columns or seal do not read (`check` says why): left as they are.
    unreadable: int = 0
    #: Rows that kept changing or stayed locked: the next run takes them.
    busy: int = 0
    #: The last id walked (a page's end), where a next page starts.
    last_id: int = 0

    def add(self, other: ResealReport) -> None:
        self.rows += other.rows
        self.rewritten += other.rewritten
        self.unchanged += other.unchanged
        self.plaintext += other.plaintext
        self.unreadable += other.unreadable
        self.busy += other.busy
        for key, count in other.missing_key.items():
            self.missing_key[key] = self.missing_key.get(key, 0) + count
        self.last_id = max(self.last_id, other.last_id)

    @property
    def complete(self) -> bool:
        """True when every row is as wanted (nothing left for a next run or a person)."""
        return not (self.missing_key or self.unreadable or self.busy)


def _left_because(sealer: Sealer, record: TokenRecord, target: ResealTarget) -> str | None:
    """Why the row stays as it is (an outcome `_count` counts), or None: rewrite it."""
    if record.missing_key is not None:
        return "missing_key"
    if not record.rewritable:
        return "unreadable"
    if record.key_id is None:  # plaintext
        if target != "seal":
            return "unchanged" if target == "unseal" else "plaintext"
        secret = record.client_in_row and record.client_secret
        if not (record.access_token or record.refresh_token or secret):
            return "unchanged"  # nothing secret to seal
    elif target == "seal" or (target == "rotate" and record.key_id == sealer.sealing_key_id):
        return "unchanged"
    return None


def _columns(
    sealer: Sealer, record: TokenRecord, target: ResealTarget
) -> tuple[dict[str, Any], dict[str, Any] | None] | str:
    """The row's new token_data and oauth_config (None: leave it), or why it stays."""
    reason = _left_because(sealer, record, target)
    if reason is not None:
        return reason
    client_secret = record.client_secret if record.client_in_row else None
    if target == "unseal":
        data, config = plain_columns(
            token_data=record.token_data,
            oauth_config=record.oauth_config,
            access_token=record.access_token,
            access_token_key=record.access_token_key,
            refresh_token=record.refresh_token,
            client_secret=client_secret,
        )
        return data, config if client_secret and record.oauth_config is not None else None
    data, config = sealed_columns(
        sealer,
        user_id=record.user_id,
        token_uri=record.token_uri,
        token_data=record.token_data,
        oauth_config=record.oauth_config,
        access_token=record.access_token,
        access_token_key=record.access_token_key,
        refresh_token=record.refresh_token,
        client_secret=client_secret,
        fingerprint=fingerprint(record.refresh_token) if record.refresh_token else None,
    )
    changed = record.oauth_config is not None and "client_secret" in record.oauth_config
    return data, config if changed else None


def reseal_page(core: Core, target: ResealTarget, *, after: int, limit: int) -> Flow[ResealReport]:
    """Rewrite the rows after id `after` (at most `limit`) as `target` wants; their tally."""
    sealer = core.sealer
    if sealer is None or (target != "unseal" and not sealer.sealing):
        raise ValueError(f"{target} needs a store with keys that seals")
    rows = yield from once_more_if_lost(
        Query(Statement.WHOLE_PAGE, {"after": after, "limit": limit})
    )
    tally = ResealReport(rows=len(rows), last_id=rows[-1][0] if rows else after)
    for attempt in range(ATTEMPTS):
        writes: dict[int, str] = {}  # row id -> its entry in RESEAL_ROWS's JSON array
        for row in rows:
            record = core.parse(row)
            outcome = _columns(sealer, record, target)
            entry = outcome if isinstance(outcome, str) else _entry(record, *outcome)
            if entry.startswith("{"):
                writes[record.row_id] = entry
            else:
                _count(tally, entry, record)
        if not writes:
            break
        written = yield from once_more_if_lost(
            Query(Statement.RESEAL_ROWS, {"rows": "[" + ",".join(writes.values()) + "]"})
        )
        done = {row[0] for row in written}
        tally.rewritten += len(done)
        missed = [row_id for row_id in writes if row_id not in done]
        if not missed:
            break
        if attempt == ATTEMPTS - 1:
            tally.busy += len(missed)
            break
        yield from Sleep(RETRY_PAUSE * (attempt + 1))
        # Read again what changed or was locked (a deleted row is simply gone).
        rows = yield from once_more_if_lost(Query(Statement.ROWS_BY_ID, {"ids": missed}))
    return tally


def _entry(record: TokenRecord, data: dict[str, Any], config: dict[str, Any] | None) -> str:
    """The row's entry in RESEAL_ROWS's array (JSON), or "unreadable" when a column would
    not be writable (each is checked as a write of it alone would be)."""
    try:
        data_json, config_json = to_json(data), optional_json(config)
    except UnwritableError:
        return "unreadable"
    version = json.dumps(record.version)
    return (
        f'{{"id":{int(record.row_id)},"version":{version},"token_data":{data_json},'
        f'"set_oauth_config":{"true" if config_json else "false"},'
        f'"oauth_config":{config_json or "null"}}}'
    )


def _count(tally: ResealReport, outcome: str, record: TokenRecord) -> None:
    if outcome == "missing_key":
        key = record.missing_key or "(unnamed)"
        tally.missing_key[key] = tally.missing_key.get(key, 0) + 1
    elif outcome == "unreadable":
        tally.unreadable += 1
    elif outcome == "plaintext":
        tally.plaintext += 1
    else:
        tally.unchanged += 1
