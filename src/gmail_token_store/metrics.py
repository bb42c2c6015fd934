"""The table's health in Prometheus's text exposition format.

    sys.stdout.write(exposition(store.check_all()))

What `gmail-token-store metrics` prints (for node_exporter's textfile collector, a cron job
writing the file) and what the web app's `GET /metrics` serves with its own request
families.
Every state is exported, zeros included, so that an alert on one state never sees the
series vanish; ages come from the database's clock, so no host's clock skews them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

from ._core.status import ATTENTION_STATES, TokenState, TokenStatus

__all__ = ["ROW_STATES", "exposition", "gauge"]

#: The states a row can be in (`list` shows them); "not-found" is not a row's.
ROW_STATES: tuple[str, ...] = tuple(state for state in get_args(TokenState) if state != "not-found")


def gauge(name: str, help_text: str, samples: Sequence[tuple[str, float]]) -> list[str]:
    """One gauge family as exposition lines (`samples`: label text, value)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return lines


def label_value(text: str) -> str:
    """A label value as the exposition format escapes it (a key id comes from a row)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(statuses: Sequence[TokenStatus]) -> str:
    """The metrics for these statuses (one `check_all()`), as exposition text."""
    counts = dict.fromkeys(ROW_STATES, 0)
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    lines = gauge(
        "gmail_token_grants",
        "Grants in the gmail_token table, by state (the states of gmail-token-store list).",
        [(f'{{state="{state}"}}', count) for state, count in counts.items()],
    )
    lines += gauge(
        "gmail_token_needs_attention",
        "Grants that need a person: " + ", ".join(sorted(ATTENTION_STATES)) + ".",
        [("", sum(counts[state] for state in ATTENTION_STATES))],
    )
    expiries = [s.remaining_seconds for s in statuses if s.remaining_seconds is not None]
    if expiries:
        lines += gauge(
            "gmail_token_earliest_expiry_seconds",
            "Seconds until the earliest access token expiry (0: one has expired).",
            [("", min(expiries))],
        )
    keys: dict[str, int] = {}
    for status in statuses:
        if status.key_id is not None:
            keys[status.key_id] = keys.get(status.key_id, 0) + 1
    lines += gauge(
        "gmail_token_sealed_grants",
        "Grants whose secrets are sealed, by key id (an old key can go at 0).",
        [(f'{{key_id="{label_value(key)}"}}', count) for key, count in sorted(keys.items())],
    )
    lines += gauge(
        "gmail_token_plaintext_grants",
        "Grants whose secrets are stored in plaintext.",
        [("", sum(1 for s in statuses if s.status == "found" and s.key_id is None))],
    )
    ages = [s.seconds_since_refresh for s in statuses if s.seconds_since_refresh is not None]
    if ages:
        lines += gauge(
            "gmail_token_newest_refresh_age_seconds",
            "Seconds since any grant was last refreshed or saved (the keepalive's pulse).",
            [("", min(ages))],
        )
    return "\n".join(lines) + "\n"
