"""Herds: many callers in many processes ask for one user's token at the same moment.

For an expired token everybody needs the new one, so all wait for the single refresh;
inside the refresh window (2 minutes left) one caller refreshes and the rest are answered
at once with the still-valid token. Each scenario runs `--repeats` times on a fresh row;
the table shows token requests per run and the median over runs of each run's p50 / p99
wait. Run: `make bench` or `.venv/bin/python benchmarks/herd.py`.
"""

from __future__ import annotations

import argparse

from gmail_token_store.testing import FakeTokenEndpoint, run_herd

from _common import database, insert_rows, median, percentile, print_table

SCENARIOS = [
    # (name, seconds left on the token, processes, threads per process, endpoint latency s)
    ("expired token", -60, 6, 4, 0.2),
    ("expired token, big herd", -60, 8, 8, 0.2),
    ("refresh window (2 min left)", 120, 4, 4, 1.5),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    with database() as postgres:
        for name, seconds_left, processes, threads, latency in SCENARIOS:
            requests, p50s, p99s, waited = [], [], [], []
            for _ in range(args.repeats):
                with FakeTokenEndpoint(latency=latency) as endpoint:
                    [user_id] = insert_rows(
                        postgres.dsn, 1, expires_in=seconds_left, token_uri=endpoint.token_uri
                    )
                    calls = run_herd(
                        postgres.dsn,
                        user_id,
                        processes=processes,
                        threads=threads,
                        store_options={"cache_ttl": 0, "lock_timeout": 30},
                    )
                    errors = [call.error for call in calls if call.error]
                    if errors:
                        raise SystemExit(f"{name}: {errors[0]}")
                    issued = {r.issued_access_token for r in endpoint.refresh_requests()}
                    requests.append(len(endpoint.refresh_requests()))
                    waits = [call.seconds * 1000 for call in calls]
                    p50s.append(percentile(waits, 0.5))
                    p99s.append(percentile(waits, 0.99))
                    # A caller that got the new token waited for the refresh to finish.
                    waited.append(sum(1 for call in calls if call.token in issued))
            rows.append(
                [
                    name,
                    f"{processes * threads} x {processes}",
                    f"{latency * 1000:.0f}",
                    "/".join(map(str, requests)),
                    "/".join(map(str, waited)),
                    f"{median(p50s):.1f}",
                    f"{median(p99s):.1f}",
                ]
            )
    print_table(
        f"Herds on one token ({args.repeats} runs each; requests and waiters listed per run)",
        [
            "scenario",
            "callers x processes",
            "endpoint ms",
            "token requests",
            "got new token",
            "p50 wait ms",
            "p99 wait ms",
        ],
        rows,
    )
    print("\nTargets: exactly one token request per run; inside the refresh window at most one")
    print("caller waits for it (the one that refreshes).")


if __name__ == "__main__":
    main()
