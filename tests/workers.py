"""Code that runs in child processes started by the fault tests.

Children are started with the "spawn" method (no inherited threads or sockets), so each
one builds its own TokenStore, exactly like a separate service replica would.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue

from gmail_token_store import TokenStore, TokenStoreError


def refresh_forever(dsn: str, user_id: str) -> None:
    """Start a refresh whose token request never returns (the test kills us meanwhile)."""
    with TokenStore(
        dsn, allow_loopback_token_uri=True, cache_ttl=0, http_timeout=60.0, lock_timeout=60.0
    ) as store:
        store.get_credentials(user_id)


def refresh_loop(
    dsn: str, keys: str, user_ids: list[str], until: float, errors: Queue[str]
) -> None:
    """A service replica: force-refreshes its users until `until`, sealing with `keys`."""
    with TokenStore(
        dsn, keys=keys, allow_loopback_token_uri=True, cache_ttl=0, http_timeout=5, lock_timeout=20
    ) as store:
        while time.time() < until:
            for user_id in user_ids:
                try:
                    store.refresh(user_id, force=True)
                except Exception as exc:  # reported to the test
                    errors.put(f"{type(exc).__name__}: {exc}")


def serve_credentials(dsn: str, user_id: str, conn: Connection) -> None:
    """A service replica: answer each "get" on `conn` with ("token", the access token) or
    ("error", the error's class name), from one long-lived store (default cache), until
    "stop"."""
    with TokenStore(dsn, allow_loopback_token_uri=True, http_timeout=5.0) as store:
        while conn.recv() != "stop":
            try:
                conn.send(("token", store.get_credentials(user_id).token))
            except TokenStoreError as exc:
                conn.send(("error", type(exc).__name__))
