"""Encryption at rest, side by side: the miss path on sealed vs plaintext rows, the cached
path with and without keys, and `encrypt-all` over a table (rows per second, peak memory).

* miss path: `get_credentials` with `cache_ttl=0` by one store with keys, cycling over
  plaintext users or sealed users of the same table. "sealed, cold" cycles over more users
  than the store keeps opened values for (10,000), so every call decrypts (one AES-GCM
  operation); "sealed, seen" over 1,000 users, whose unchanged sealed values the store has
  opened before (a dictionary lookup, as when a row is read again before it is refreshed);
* cached path: `get_credentials` served from the cache by a store with keys and one
  without;
* `encrypt-all` of `--rows` plaintext rows (100,000) by the command, in its own process:
  wall time, rows per second, and its peak RSS next to the command's RSS on an empty table.

Rounds are interleaved in a shuffled order; the table shows medians of per-round means.
Run: `make bench` or `.venv/bin/python benchmarks/sealing.py [--rounds N] [--rows N]`.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gmail_token_store import TokenStore

from _common import database, insert_rows, median, print_table, verdict

KEYS = f"bench={base64.b64encode(os.urandom(32)).decode()}"
TOKEN_URI = "https://oauth2.googleapis.com/token"
COMMAND = str(Path(sys.executable).with_name("gmail-token-store"))


def cycling(store: TokenStore, users: list[str], calls: int) -> Callable[[], None]:
    position = [0]

    def run() -> None:
        start = position[0]
        for index in range(start, start + calls):
            store.get_credentials(users[index % len(users)])
        position[0] = (start + calls) % len(users)

    return run


def timed(run: Callable[[], None], calls: int) -> float:
    started = time.perf_counter()
    run()
    return (time.perf_counter() - started) / calls * 1e6


def run_command(dsn: str, *args: str) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of one run of the command."""
    env = {**os.environ, "GMAIL_TOKEN_STORE_DSN": dsn, "GMAIL_TOKEN_STORE_KEYS": KEYS}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(
        [COMMAND, *args], env=env, capture_output=True, text=True, check=True, timeout=3600
    )
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: the command is our biggest child.
    return wall, max(peak, before), result.stdout


def miss_and_cache(rounds: int, calls: int) -> None:
    with database() as postgres:
        dsn = postgres.dsn
        plain = insert_rows(dsn, 12_000, expires_in=7200, token_uri=TOKEN_URI)
        sealed_users = insert_rows(dsn, 12_000, expires_in=7200, token_uri=TOKEN_URI)
        with TokenStore(dsn, keys=KEYS) as sealer:
            # Seal the second set only: encrypt-all walks every row, so seal through saves.
            for user_id in sealed_users:
                sealer.save(user_id, sealer.get_credentials(user_id))
        keyed = TokenStore(dsn, keys=KEYS, cache_ttl=0)
        cached_keyed = TokenStore(dsn, keys=KEYS)
        cached_plain = TokenStore(dsn)
        hot = plain[:100]
        for store in (cached_keyed, cached_plain):
            for user_id in hot:
                store.get_credentials(user_id)
        seen = sealed_users[:1000]
        for user_id in seen:
            keyed.get_credentials(user_id)
        sides: dict[str, Callable[[], None]] = {
            "miss, plaintext rows": cycling(keyed, plain, calls),
            "miss, sealed rows, cold": cycling(keyed, sealed_users, calls),
            "miss, sealed rows, seen": cycling(keyed, seen, calls),
            "cache hit, store with keys": cycling(cached_keyed, hot, calls * 20),
            "cache hit, store without keys": cycling(cached_plain, hot, calls * 20),
        }
        per_call: dict[str, list[float]] = {name: [] for name in sides}
        for run in sides.values():
            run()  # warm up (prepared statements, pool)
        for _ in range(rounds):
            order = list(sides)
            random.shuffle(order)
            for name in order:
                count = calls * 20 if name.startswith("cache") else calls
                per_call[name].append(timed(sides[name], count))
        for store in (keyed, cached_keyed, cached_plain):
            store.close()
    us = {name: median(values) for name, values in per_call.items()}
    print_table(
        f"Sealed rows: per call, median of {rounds} rounds",
        ("path", "us per call"),
        [(name, f"{value:.2f}") for name, value in us.items()],
    )
    cold = us["miss, sealed rows, cold"] / us["miss, plaintext rows"]
    seen_ratio = us["miss, sealed rows, seen"] / us["miss, plaintext rows"]
    hit = us["cache hit, store with keys"] / us["cache hit, store without keys"]
    print("\nRatios:")
    print(f"  miss sealed (cold) / plaintext <= 1.05: {cold:.3f}  {verdict(cold, 1.05)}")
    print(
        f"  miss sealed (seen) / plaintext <= 1.05: {seen_ratio:.3f}  {verdict(seen_ratio, 1.05)}"
    )
    print(f"  cache hit with keys / without:          {hit:.3f}  (unchanged: same code path)")


def encrypt_all(rows: int) -> None:
    with database() as postgres:
        dsn = postgres.dsn
        _, empty_rss, _ = run_command(dsn, "list")
        batch = 20_000
        for start in range(0, rows, batch):
            insert_rows(dsn, min(batch, rows - start), expires_in=7200, token_uri=TOKEN_URI)
        wall, peak, out = run_command(dsn, "encrypt-all")
        again, _, out_again = run_command(dsn, "encrypt-all")
    print_table(
        f"encrypt-all of {rows:,} rows (the command, in its own process)",
        ("run", "wall s", "rows/s", "peak RSS MB"),
        [
            ("first: seals every row", f"{wall:.2f}", f"{rows / wall:,.0f}", f"{peak / 1024:.0f}"),
            ("again: nothing to do", f"{again:.2f}", f"{rows / again:,.0f}", "-"),
            ("the command on an empty table", "-", "-", f"{empty_rss / 1024:.0f}"),
        ],
    )
    print("  " + out.splitlines()[0])
    print("  " + out_again.splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    miss_and_cache(args.rounds, args.calls)
    encrypt_all(args.rows)


if __name__ == "__main__":
    main()
