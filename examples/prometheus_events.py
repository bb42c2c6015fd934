"""Count the store's events in Prometheus (needs `pip install prometheus-client`).

`on_event` receives one small frozen TokenEvent per refresh, stale serve, dead grant,
failed refresh and lock timeout: user id, email, duration, the error from a fixed set
(`EventError`) and a message in words; never a secret. The hook runs on the caller's
thread, so keep it cheap; exceptions in it are logged and ignored.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from gmail_token_store import TokenEvent, TokenStore

EVENTS = Counter(
    "gmail_token_store_events_total",
    "Token store events by kind (refreshed, served_stale, reauth_required, refresh_failed, "
    "lock_timeout) and error kind",
    ["kind", "error"],
)
REFRESH_SECONDS = Histogram(
    "gmail_token_store_refresh_seconds",
    "Time spent in a refresh, lock wait included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def count_event(event: TokenEvent) -> None:
    # Label by kind and error only, both from fixed sets: user ids or the message (free
    # text from the token endpoint) would explode the series count.
    EVENTS.labels(kind=event.kind, error=event.error or "").inc()
    if event.kind == "refreshed":
        REFRESH_SECONDS.observe(event.duration)


def make_store() -> TokenStore:
    return TokenStore.from_env(on_event=count_event)
