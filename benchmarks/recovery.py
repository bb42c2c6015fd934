"""Recovery after an outage: from the moment PostgreSQL accepts connections again to the
first call that succeeds, for outages of several lengths, both stores.

A caller asks for a token every 20 ms (cache_ttl=0) through the outage; a probe connects
every 10 ms to learn when the server accepts again. The store opens connections in the
caller's own thread, so no background reconnect backoff stands between the two moments.
Run: `make bench` or `.venv/bin/python benchmarks/recovery.py [--outages 5 20 90]`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable

import psycopg

from gmail_token_store import AsyncTokenStore, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer

from _common import call_until, database, insert_rows, print_table, verdict

TARGET_SECONDS = 1.0


def accepts(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def measure(postgres: PostgresServer, call: Callable[[], None], outage: float) -> float:
    """Seconds from the server accepting again to the first successful call."""
    call()  # warm: a pooled connection that the outage will kill
    successes: list[float] = []
    stop = threading.Event()

    postgres.stop_serving()
    caller = threading.Thread(target=call_until, args=(stop, call, successes, 0.02))
    caller.start()
    time.sleep(outage)
    successes.clear()
    starter = threading.Thread(target=postgres.start_serving)
    starter.start()
    while not accepts(postgres.dsn):
        time.sleep(0.01)
    accepting = time.monotonic()
    starter.join()
    deadline = accepting + 60
    while not [t for t in successes if t >= accepting] and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    caller.join()
    first = min((t for t in successes if t >= accepting), default=deadline)
    return max(first - accepting, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[5.0, 20.0, 90.0])
    args = parser.parse_args()
    rows: list[list[str]] = []
    worst = 0.0
    with database() as postgres, FakeTokenEndpoint() as endpoint:
        [user_id] = insert_rows(postgres.dsn, 1, expires_in=86_400, token_uri=endpoint.token_uri)
        sync_store = TokenStore(
            postgres.dsn, allow_loopback_token_uri=True, cache_ttl=0, connect_timeout=2
        )
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        async_store = AsyncTokenStore(
            postgres.dsn, allow_loopback_token_uri=True, cache_ttl=0, connect_timeout=2
        )

        def sync_call() -> None:
            sync_store.get_credentials(user_id)

        def async_call() -> None:
            asyncio.run_coroutine_threadsafe(async_store.get_credentials(user_id), loop).result(30)

        for outage in args.outages:
            for name, call in (("TokenStore", sync_call), ("AsyncTokenStore", async_call)):
                seconds = measure(postgres, call, outage)
                worst = max(worst, seconds)
                rows.append([f"{outage:g}", name, f"{seconds:.3f}"])
        sync_store.close()
        asyncio.run_coroutine_threadsafe(async_store.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    print_table(
        "Recovery: seconds from PostgreSQL accepting again to the first successful call",
        ["outage s", "store", "recovery s"],
        rows,
    )
    print(
        f"\nTarget: <= {TARGET_SECONDS:g} s whatever the outage: worst {worst:.3f} s"
        f"  {verdict(worst, TARGET_SECONDS)}"
    )


if __name__ == "__main__":
    main()
