"""The commands on the whole table: list (a table or JSON) and metrics, streamed.

Statuses are written as they come, one page of rows in memory at a time: the table has
fixed-width columns (a cell from the database is cut to its column), the JSON is
`json.dumps(statuses, indent=2)` byte for byte, written one status at a time with the C
string encoder (the indenting encoder is pure Python).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .. import TableSummary, TokenStatus
from .._core.text import printable
from ..metrics import exposition
from .common import EXIT_FAILURE, EXIT_OK, open_store, say

#: The table's columns: header and width. A database cell longer than its column is cut
#: (a 1 MB email must not pad every line).
COLUMNS = (
    ("USER_ID", 36),
    ("EMAIL", 32),
    ("ROBEING", 20),
    ("STATE", 15),
    ("LEFT", 7),
    ("LAST_REFRESH", 16),
    ("ACCOUNT", 10),
)


def time_left(status: TokenStatus) -> str:
    seconds = status.remaining_seconds
    if seconds is None:
        return "-"
    if status.is_expired:
        return "expired"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d"


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(
        cell.ljust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True)
    ).rstrip()


HEADER = _line(tuple(name for name, _ in COLUMNS))


def table_line(status: TokenStatus) -> str:
    """The status as one line of the table (cells escaped and cut to their columns)."""
    return _line(
        (
            printable(status.user_id, 36),
            printable(status.email or "-", 32),
            printable(status.robeing_id or "-", 20),
            status.state,
            time_left(status),
            status.last_refreshed.strftime("%Y-%m-%d %H:%M") if status.last_refreshed else "-",
            "verified" if status.account_verified else "unverified",
        )
    )


# --- JSON, indented as json.dumps(indent=2) writes it, at the C encoder's speed ----------

_string = json.encoder.encode_basestring_ascii  # C: what json.dumps uses for str


def _float(value: float) -> str:
    return json.dumps(value)  # (NaN, Infinity: as json.dumps writes them)


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _string,
    int: int.__repr__,
    float: _float,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _value: "null",
}


#: Keys as written ('"key": '), for the few dicts a listing writes over and over.
_KEYS: dict[str, str] = {}


def indented(value: Any, indent: str = "") -> str:
    """`value` as `json.dumps(value, indent=2)` writes it, nested at `indent`."""
    write = _SCALARS.get(type(value))
    if write is not None:
        return write(value)
    inner = indent + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        scalars, keys, parts = _SCALARS, _KEYS, []
        for key, item in value.items():
            name = keys.get(key) if type(key) is str else None
            if name is None:
                name = _string(str(key)) + ": "
                if type(key) is str and len(keys) < 256:
                    keys[key] = name
            write = scalars.get(type(item))
            parts.append(name + (write(item) if write is not None else indented(item, inner)))
        return "{\n" + inner + (",\n" + inner).join(parts) + "\n" + indent + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        items = (inner + indented(item, inner) for item in value)
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value, indent=2)  # anything else: as json would (or its error)


def list_grants(args: argparse.Namespace) -> int:
    out = sys.stdout.write
    attention = 0
    with open_store(args) as store:
        stream = store.iter_statuses(needs_attention=args.needs_attention)
        if args.json:
            first = True
            for status in stream:
                out(("[\n  " if first else ",\n  ") + indented(status.to_dict(), "  "))
                first = False
            out("[]\n" if first else "\n]\n")
        else:
            header = HEADER + "\n"
            for status in stream:
                out(header + table_line(status) + "\n")
                header = ""
                if status.needs_attention and status.problem:
                    out(f"    {status.state}: {printable(status.problem)}\n")
            summary = stream.summary
            say(f"{summary.total} grants, {summary.needs_attention} need attention")
            _say_keys(summary)
        attention = stream.summary.needs_attention
    if args.needs_attention and attention:
        return EXIT_FAILURE
    return EXIT_OK


def _say_keys(summary: TableSummary) -> None:
    if summary.sealed:
        counts = ", ".join(
            f"{printable(key, 64)}: {n}" for key, n in sorted(summary.sealed.items())
        )
        say(f"sealed by key: {counts}; plaintext: {summary.plaintext}")


def metrics(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stream = store.iter_statuses(needs_attention=True)  # every row counted, few parsed
        for _ in stream:
            pass
    sys.stdout.write(exposition(stream.summary))
    return EXIT_OK
