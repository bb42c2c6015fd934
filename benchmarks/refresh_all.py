"""refresh-all throughput: 1,000 due rows, a 50 ms token endpoint, --concurrency 16.

The ideal is rows x latency / concurrency (3.125 s here); the target is 1.5 x that. The
time measured is the whole `gmail-token-store refresh-all` command, interpreter start-up
included, against the fake endpoint running in this (separate) process. Rows are made
due again between rounds. Run: `make bench` or `.venv/bin/python benchmarks/refresh_all.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import psycopg

from gmail_token_store.testing import FakeTokenEndpoint

from _common import database, insert_rows, median, print_table, verdict

SCRIPT = shutil.which("gmail-token-store", path=os.path.dirname(sys.executable))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.05, help="endpoint seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    assert SCRIPT is not None, "install the package first (make bench does)"

    ideal = args.rows * args.latency / args.concurrency
    seconds: list[float] = []
    requests: list[int] = []
    with database() as postgres, FakeTokenEndpoint(latency=args.latency) as endpoint:
        insert_rows(postgres.dsn, args.rows, expires_in=-60, token_uri=endpoint.token_uri)
        env = dict(os.environ, GMAIL_TOKEN_STORE_DSN=postgres.dsn)
        for _ in range(args.rounds):
            with psycopg.connect(postgres.dsn, autocommit=True) as conn:
                conn.execute("UPDATE gmail_token SET expiry = LOCALTIMESTAMP - interval '1 minute'")
            before = len(endpoint.refresh_requests())
            began = time.perf_counter()
            result = subprocess.run(
                [SCRIPT, "refresh-all", "--concurrency", str(args.concurrency)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            seconds.append(time.perf_counter() - began)
            if result.returncode != 0:
                raise SystemExit(f"refresh-all failed:\n{result.stdout}\n{result.stderr}")
            requests.append(len(endpoint.refresh_requests()) - before)

    measured = median(seconds)
    print_table(
        f"refresh-all: {args.rows} due rows, endpoint {args.latency * 1000:.0f} ms, "
        f"--concurrency {args.concurrency} ({args.rounds} rounds)",
        ["ideal s", "median s", "runs s", "x ideal", "token requests per run"],
        [
            [
                f"{ideal:.3f}",
                f"{measured:.3f}",
                " ".join(f"{s:.2f}" for s in seconds),
                f"{measured / ideal:.2f}",
                "/".join(map(str, requests)),
            ]
        ],
    )
    print(f"\nTarget: <= 1.5 x ideal: {measured / ideal:.2f}  {verdict(measured / ideal, 1.5)}")
    print(f"Each row refreshed exactly once per run: {all(n == args.rows for n in requests)}")


if __name__ == "__main__":
    main()
