"""Code that runs in child processes started by the fault tests.

Children are started with the "spawn" method (no inherited threads or sockets), so each
one builds its own TokenStore, exactly like a separate service replica would.
"""

from __future__ import annotations

from gmail_token_store import TokenStore


def refresh_forever(dsn: str, user_id: str) -> None:
    """Start a refresh whose token request never returns (the test kills us meanwhile)."""
    with TokenStore(
        dsn, allow_loopback_token_uri=True, cache_ttl=0, http_timeout=60.0, lock_timeout=60.0
    ) as store:
        store.get_credentials(user_id)
