"""The table's health in Prometheus's text exposition format.

    stream = store.iter_statuses(needs_attention=True)
    for _ in stream:
        pass
    sys.stdout.write(exposition(stream.summary))

What `gmail-token-store metrics` prints (for node_exporter's textfile collector, a cron job
writing the file) and what the web app's `GET /metrics` serves with its own request
families.
Every state is exported, zeros included, so that an alert on one state never sees the
series vanish; ages come from the database's clock, so no host's clock skews them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._core.listing import ROW_STATES, TableSummary
from ._core.status import ATTENTION_STATES, TokenStatus

__all__ = ["ROW_STATES", "exposition", "gauge"]


def gauge(name: str, help_text: str, samples: Sequence[tuple[str, float]]) -> list[str]:
    """One gauge family as exposition lines (`samples`: label text, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return lines


def label_value(text: str) -> str:
    """A label value as the exposition format escapes it (a key id comes from a row)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(table: TableSummary | Iterable[TokenStatus]) -> str:
    """The metrics of a table, as exposition text: from a `TableSummary` (a stream's, e.g.
    `store.iter_statuses(needs_attention=True)` exhausted), or from statuses."""
    if isinstance(table, TableSummary):
        summary = table
    else:
        summary = TableSummary()
        for status in table:
            summary.add(status)
    lines = gauge(
        "gmail_token_grants",
        "Grants in the gmail_token table, by state (the states of gmail-token-store list).",
        [(f'{{state="{state}"}}', count) for state, count in summary.states.items()],
    )
    lines += gauge(
        "gmail_token_needs_attention",
        "Grants that need a person: " + ", ".join(sorted(ATTENTION_STATES)) + ".",
        [("", summary.needs_attention)],
    )
    lines += gauge(
        "gmail_token_sealed_grants",
        "Grants whose secrets are sealed, by key id (an old key can go at 0).",
        [(f'{{key_id="{label_value(key)}"}}', n) for key, n in sorted(summary.sealed.items())],
    )
    lines += gauge(
        "gmail_token_plaintext_grants",
        "Grants whose secrets are stored in plaintext.",
        [("", summary.plaintext)],
    )
    if summary.earliest_expiry_seconds is not None:
        lines += gauge(
            "gmail_token_earliest_expiry_seconds",
            "Seconds until the earliest access token expiry (0: one has expired).",
            [("", summary.earliest_expiry_seconds)],
        )
    if summary.newest_refresh_age_seconds is not None:
        lines += gauge(
            "gmail_token_newest_refresh_age_seconds",
            "Seconds since any grant was last refreshed or saved (the keepalive's pulse).",
            [("", summary.newest_refresh_age_seconds)],
        )
    return "\n".join(lines) + "\n"
