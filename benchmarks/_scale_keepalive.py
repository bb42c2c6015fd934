"""refresh-all at scale, for `scale.py`: the keepalive's rate on realistic tables of two
sizes, and several runs at once on the larger one.

Each run gets a freshly built table (a refresh changes the rows it refreshes). The due
rows are the realistic mix's due and idle ones (`refresh-all` refreshes both by default);
the dead ones are reported, never sent. The time is the whole command, interpreter
start-up included, against the fake endpoint running in this process.
"""

from __future__ import annotations

import random
import re
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gmail_token_store.testing import FakeTokenEndpoint

from _common import REALISTIC, Child, ChildRun, build_table, median, print_table, verdict

#: The keepalive's target: at most this many times the ideal time, at the larger size.
IDEAL_TARGET = 1.3
_REFRESHED = re.compile(rb"^\s*refreshed:\s+(\d+)", re.M)


@dataclass
class Runs:
    """The rounds of one size and number of processes at once."""

    rows: int
    processes: int
    due: int
    seconds: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    #: Distinct refresh tokens sent (rows), per round.
    distinct: list[int] = field(default_factory=list)
    #: The `refreshed:` counts the runs printed, summed per round (None: not printed).
    reported: list[int | None] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    #: CPU seconds per round: the runs' together, and this process's (the fake endpoint).
    cpu: list[float] = field(default_factory=list)
    endpoint_cpu: list[float] = field(default_factory=list)


def run_once(
    runs: Runs,
    dsn: str,
    endpoint: FakeTokenEndpoint,
    env: Mapping[str, str],
    argv: Sequence[str],
) -> None:
    build_table(dsn, runs.rows, REALISTIC, token_uri=endpoint.token_uri)
    before = len(endpoint.refresh_requests())
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = [Child(argv, env, keep=True) for _ in range(runs.processes)]
    done: list[ChildRun] = [child.finish() for child in children]
    for run in done:
        if run.returncode not in (0, 1):  # 1: the dead rows need a person
            raise SystemExit(f"refresh-all failed ({run.returncode}): {run.stderr}")
    used = resource.getrusage(resource.RUSAGE_SELF)
    runs.endpoint_cpu.append(used.ru_utime + used.ru_stime - mine.ru_utime - mine.ru_stime)
    runs.cpu.append(sum(run.cpu_seconds for run in done))
    sent = endpoint.refresh_requests()[before:]
    runs.seconds.append(max(run.ended for run in done) - min(run.started for run in done))
    runs.requests.append(len(sent))
    runs.distinct.append(len({request.refresh_token for request in sent}))
    counts = [_REFRESHED.search(run.output) for run in done]
    runs.reported.append(
        sum(int(match.group(1)) for match in counts if match) if all(counts) else None
    )
    runs.peak_rss_mb = max(runs.peak_rss_mb, *(run.peak_rss_mb for run in done))


def _per_run(values: Sequence[int | None]) -> str:
    return "/".join("?" if value is None else str(value) for value in values)


def keepalive(
    dsn: str,
    endpoint: FakeTokenEndpoint,
    env: Mapping[str, str],
    *,
    script: str,
    sizes: Sequence[int],
    processes: Sequence[int],
    rounds: int,
    concurrency: int,
    latency: float,
) -> None:
    """Measure and print the keepalive's tables."""
    argv = [script, "refresh-all", "--concurrency", str(concurrency)]
    largest = max(sizes)
    due = {rows: REALISTIC.count(rows, "due") + REALISTIC.count(rows, "idle") for rows in sizes}
    scenarios = [Runs(rows, 1, due[rows]) for rows in sizes]
    scenarios += [Runs(largest, count, due[largest]) for count in processes if count > 1]
    for round_number in range(rounds):
        for runs in random.sample(scenarios, len(scenarios)):
            run_once(runs, dsn, endpoint, env, argv)
            print(
                f"keepalive round {round_number + 1}: {runs.rows:,} rows x {runs.processes}"
                f" at once: {runs.seconds[-1]:.2f} s",
                flush=True,
            )

    def ideal(runs: Runs) -> float:
        return runs.due / concurrency * latency

    singles = {runs.rows: runs for runs in scenarios if runs.processes == 1}
    print_table(
        f"refresh-all --concurrency {concurrency} on realistic tables (due: the 5% due and "
        f"2% idle rows), endpoint {latency * 1000:.0f} ms, medians of {rounds} rounds",
        [
            "rows",
            "due",
            "ideal s",
            "median s",
            "runs s",
            "x ideal",
            "refreshes/s",
            "token requests per run",
            "rows refreshed per run",
            "peak RSS MB",
            "CPU s",
            "endpoint CPU s",
        ],
        [
            [
                f"{runs.rows:,}",
                f"{runs.due:,}",
                f"{ideal(runs):.2f}",
                f"{median(runs.seconds):.2f}",
                " ".join(f"{s:.2f}" for s in runs.seconds),
                f"{median(runs.seconds) / ideal(runs):.2f}",
                f"{runs.due / median(runs.seconds):.0f}",
                _per_run(runs.requests),
                _per_run(runs.reported),
                f"{runs.peak_rss_mb:.0f}",
                f"{median(runs.cpu):.1f}",
                f"{median(runs.endpoint_cpu):.1f}",
            ]
            for runs in singles.values()
        ],
    )
    big = singles[largest]
    times_ideal = median(big.seconds) / ideal(big)
    print(
        f"\nTarget: {largest:,} rows within {IDEAL_TARGET}x the ideal: {times_ideal:.2f}"
        f"  {verdict(times_ideal, IDEAL_TARGET)}"
    )
    smallest = singles[min(sizes)]
    if smallest is not big:
        per_row = (median(big.seconds) / big.due) / (median(smallest.seconds) / smallest.due)
        print(
            f"Seconds per due row at {largest:,} against {smallest.rows:,} rows: {per_row:.2f}"
            f" (the same rate: at most 1.1)  {verdict(per_row, 1.1)}"
        )
    herds = [runs for runs in scenarios if runs.processes > 1]
    if not herds:
        return
    alone = median(big.seconds)
    print_table(
        f"refresh-all runs started at once on the {largest:,}-row table ({big.due:,} due), "
        f"each --concurrency {concurrency}, medians of {rounds} rounds",
        [
            "runs at once",
            "median s",
            "runs s",
            "speedup vs 1",
            "x (1 run / k)",
            "token requests per run",
            "rows sent per run",
            "duplicate requests",
            "peak RSS MB",
            "CPU s (all runs)",
            "endpoint CPU s",
        ],
        [
            [
                str(runs.processes),
                f"{median(runs.seconds):.2f}",
                " ".join(f"{s:.2f}" for s in runs.seconds),
                f"{alone / median(runs.seconds):.2f}",
                f"{median(runs.seconds) / (alone / runs.processes):.2f}",
                _per_run(runs.requests),
                _per_run(runs.distinct),
                _per_run(
                    [
                        sent - distinct
                        for sent, distinct in zip(runs.requests, runs.distinct, strict=True)
                    ]
                ),
                f"{runs.peak_rss_mb:.0f}",
                f"{median(runs.cpu):.1f}",
                f"{median(runs.endpoint_cpu):.1f}",
            ]
            for runs in [big, *herds]
        ],
    )
    for runs in herds:
        ratio = median(runs.seconds) / (alone / runs.processes)
        once = all(
            sent == distinct == runs.due
            for sent, distinct in zip(runs.requests, runs.distinct, strict=True)
        )
        print(
            f"Target: {runs.processes} runs at once take about 1/{runs.processes} of one "
            f"(at most {IDEAL_TARGET}x that): {ratio:.2f}  {verdict(ratio, IDEAL_TARGET)}; "
            f"each due row sent once: {'yes' if once else 'NO'}"
        )
