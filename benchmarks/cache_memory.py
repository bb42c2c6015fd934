"""Cache memory: 100,000 distinct users asked once each; the default cache holds 10,000.

Prints the process's resident memory and the number of cached users at checkpoints; with
the LRU bound the memory stops growing once the cache is full. Run: `make bench` or
`.venv/bin/python benchmarks/cache_memory.py [--users N]`.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import psycopg

from gmail_token_store import TokenStore

from _common import database, print_table


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()

    with database() as postgres:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO gmail_token"
                " (user_id, token_data, oauth_config, scopes, metadata, expiry)"
                " SELECT gen_random_uuid(),"
                "  jsonb_build_object('access_token', 'ya29.bench-' || n || repeat('a', 120),"
                "   'refresh_token', '1//bench-refresh-' || n, 'token_type', 'Bearer'),"
                "  jsonb_build_object('client_id', 'bench-client', 'client_secret', 'bench-secret',"
                "   'token_uri', 'https://oauth2.googleapis.com/token'),"
                "  '[\"https://www.googleapis.com/auth/gmail.send\"]'::jsonb,"
                "  jsonb_build_object('email', 'user' || n || '@gmail.com'),"
                "  LOCALTIMESTAMP + interval '1 day'"
                " FROM generate_series(1, %s) AS n",
                (args.users,),
            )
            user_ids = [str(row[0]) for row in conn.execute("SELECT user_id FROM gmail_token")]
        checkpoints = {args.users // 10, args.users // 4, args.users // 2, args.users}
        rows = []
        with TokenStore(postgres.dsn, allow_loopback_token_uri=True) as store:
            cache = store._cache
            assert cache is not None
            gc.collect()
            baseline = resident_mb()
            began = time.perf_counter()
            for asked, user_id in enumerate(user_ids, start=1):
                store.get_credentials(user_id)
                if asked in checkpoints:
                    gc.collect()
                    rows.append(
                        [
                            f"{asked:,}",
                            f"{len(cache):,}",
                            f"{resident_mb():.1f}",
                            f"{resident_mb() - baseline:+.1f}",
                            f"{(time.perf_counter() - began) / asked * 1e6:.0f}",
                        ]
                    )
    print_table(
        f"Cache memory: {args.users:,} distinct users asked once each (cache_size 10,000)",
        ["users asked", "cached", "RSS MB", "vs start MB", "us/call so far"],
        rows,
    )
    print("\nTarget: memory flat once the cache is full (compare the last rows).")


if __name__ == "__main__":
    main()
