"""The error window of a failover: from `pg_promote()` on the standby to the first call that
succeeds, with the store on a multi-host DSN (target_session_attrs=read-write), median of 3.

A caller asks for a token every 10 ms (cache_ttl=0) while the primary stops and, a second
later, the standby is promoted. Run: `make bench` or `.venv/bin/python benchmarks/failover.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable

from gmail_token_store import AsyncTokenStore, TokenStore, create_table
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    insert_grant,
    throwaway_replicated_postgresql,
)

from _common import call_until, median, print_table


def one_failover(kind: str, endpoint: FakeTokenEndpoint) -> float:
    """Seconds from the promotion to the first successful call."""
    with throwaway_replicated_postgresql() as servers:
        create_table(servers.primary.dsn)
        user_id = insert_grant(servers.primary.dsn, token_uri=endpoint.token_uri).user_id
        servers.wait_for_replay()
        call: Callable[[], object]
        loop = asyncio.new_event_loop()
        if kind == "TokenStore":
            store = TokenStore(
                servers.dsn, allow_loopback_token_uri=True, cache_ttl=0, connect_timeout=2
            )
            call = lambda: store.get_credentials(user_id)  # noqa: E731
        else:
            async_store = AsyncTokenStore(
                servers.dsn, allow_loopback_token_uri=True, cache_ttl=0, connect_timeout=2
            )
            call = lambda: loop.run_until_complete(async_store.get_credentials(user_id))  # noqa: E731
        call()
        successes: list[float] = []
        stop = threading.Event()

        caller = threading.Thread(target=call_until, args=(stop, call, successes, 0.01))
        caller.start()
        time.sleep(0.5)
        servers.primary.stop_serving()
        time.sleep(1.0)
        successes.clear()
        servers.standby.promote()
        promoted = time.monotonic()
        deadline = promoted + 30
        while not [t for t in successes if t > promoted] and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        caller.join()
        if kind == "TokenStore":
            store.close()
        else:
            loop.run_until_complete(async_store.aclose())
        loop.close()
        return min((t for t in successes if t > promoted), default=deadline) - promoted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with FakeTokenEndpoint() as endpoint:
        for kind in ("TokenStore", "AsyncTokenStore"):
            windows = [one_failover(kind, endpoint) for _ in range(args.rounds)]
            rows.append([kind, f"{median(windows):.3f}", " ".join(f"{w:.3f}" for w in windows)])
    print_table(
        f"Failover: seconds from pg_promote() to the first successful call ({args.rounds} runs)",
        ["store", "median s", "runs s"],
        rows,
    )


if __name__ == "__main__":
    main()
