"""Code that runs in child processes started by the concurrency and fault tests.

Children are started with the "spawn" method (no inherited threads or sockets), so each
one builds its own TokenStore, exactly like a separate service replica would.
"""

from __future__ import annotations

import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from gmail_token_store import TokenStore


def herd_member(
    dsn: str,
    user_id: str,
    threads: int,
    start: Barrier,
    results: Queue[tuple[str, float | str]],
    store_options: dict[str, Any],
) -> None:
    """Call get_credentials from `threads` threads at once; report (token, seconds) each."""
    with TokenStore(dsn, **store_options) as store:
        store.check(user_id)  # warm the pool so the herd starts together
        local_start = threading.Barrier(threads)

        def call() -> None:
            local_start.wait(timeout=30)
            began = time.monotonic()
            try:
                token = store.get_credentials(user_id).token or ""
                results.put((token, time.monotonic() - began))
            except Exception as exc:
                results.put(("error", f"{type(exc).__name__}: {exc}"))

        workers = [threading.Thread(target=call) for _ in range(threads)]
        start.wait(timeout=60)
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)


def refresh_forever(dsn: str, user_id: str) -> None:
    """Start a refresh whose token request never returns (the test kills us meanwhile)."""
    with TokenStore(dsn, cache_ttl=0, http_timeout=60.0, lock_timeout=60.0) as store:
        store.get_credentials(user_id)
