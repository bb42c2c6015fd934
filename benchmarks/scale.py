"""Scale: the command on 10k, 100k (and 1M) rows against the bare SQL of the same work.

Tables are built in the server (`_common.build_table`) in the production layout with the
issue's realistic mix: 90% fresh, 5% due, 3% dead (invalid_grant recorded for the stored
refresh token), 2% idle (updated 160 days ago). `refresh-all` with nothing due runs on a
table of the same size where every row is fresh (nothing due, dead or idle).

For each size and command, the installed `gmail-token-store` and psql running the bare
SQL (`_scale_sql`: what a DBA would write for the same output, `--show-sql` prints it)
run as child processes, rounds interleaved in shuffled order; stdout is counted, never
kept. The table gives the medians of wall time, the child's CPU time and its own peak RSS
(os.wait4, through a small launcher: see `_common.Child`), and the ratio; the targets
(command at most 2x the bare SQL for `list --json`, 3x for the others, peak RSS at most
100 MB) are judged at 1M rows, where they are set: below it the interpreter's start-up
(`gmail-token-store --version`, in the title) weighs on the ratio. At the sizes up to
100k, each command's output is first checked against the bare SQL's, row by row.

Then the keepalive: `refresh-all --concurrency 16` on realistic tables of 10,000 and
100,000 rows (700 and 7,000 due: the 5% due and the 2% idle; the 3% dead are reported,
not sent) against a FakeTokenEndpoint answering in 50 ms, against the ideal (due / 16 x
0.05 s), and 2 or 3 processes started at once on the 100k table: total time, token
requests (each due row should be refreshed once) and the speedup over one process. The
fake endpoint runs in this process: its CPU seconds are shown, as they share the cores.

Run: `make bench`, or `.venv/bin/python benchmarks/scale.py [--million] [--sizes 10000,...]
[--rounds N] [--only list-json,needs-attention,metrics,refresh-all,keepalive,shared]
[--show-sql] [--keepalive-rounds N]`. 1M rows take minutes (one round by default:
`--million-rounds`); a keepalive round at 100k about a minute on 2 busy cores.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict

from gmail_token_store.testing import FakeTokenEndpoint

import _scale_sql as bare_sql
from _common import (
    ALL_FRESH,
    REALISTIC,
    ChildRun,
    Mix,
    build_table,
    database,
    median,
    print_table,
    run_child,
    verdict,
)
from _scale_keepalive import keepalive

SCRIPT = shutil.which("gmail-token-store", path=os.path.dirname(sys.executable))
MILLION = 1_000_000
RSS_TARGET_MB = 100.0
#: Sizes up to this one are checked: both sides' outputs compared row by row.
CHECKED_UP_TO = 100_000


@dataclass(frozen=True, slots=True)
class Work:
    """One command, the table it runs on, its bare SQL (psql -c each) and its target."""

    argv: tuple[str, ...]
    mix: Mix
    statements: tuple[str, ...]
    target: float


WORK = {
    "list-json": Work(("list", "--json"), REALISTIC, (bare_sql.LIST_JSON,), 2.0),
    "needs-attention": Work(
        ("list", "--needs-attention"),
        REALISTIC,
        (bare_sql.NEEDS_ATTENTION, bare_sql.COUNT),
        3.0,
    ),
    "metrics": Work(("metrics",), REALISTIC, (bare_sql.METRICS,), 3.0),
    "refresh-all": Work(("refresh-all",), ALL_FRESH, (bare_sql.REFRESH_ALL, bare_sql.COUNT), 3.0),
}
SCENARIOS = (*WORK, "keepalive", "shared")


def psql_binary() -> str:
    """The newest server's psql, else the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), key=_version_key)
    psql = found[-1] if found else shutil.which("psql")
    if psql is None:
        raise SystemExit("psql not found: install postgresql-client (make system-packages)")
    return psql


def _version_key(path: str) -> int:
    digits = re.search(r"/postgresql/(\d+)/", path)
    return int(digits.group(1)) if digits else 0


def psql_env(dsn: str) -> dict[str, str]:
    """libpq's variables for the DSN: the password stays out of psql's argv."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    params = conninfo_to_dict(dsn)
    env = {names[key]: str(value) for key, value in params.items() if key in names}
    env["PGDATABASE"] = str(params.get("dbname", ""))
    return dict(os.environ, **env)


@dataclass
class Sample:
    """The rounds of one size and command."""

    command: list[ChildRun] = field(default_factory=list)
    bare: list[ChildRun] = field(default_factory=list)


def measure(
    work: Work, rounds: int, command_env: dict[str, str], bare_env: dict[str, str]
) -> Sample:
    assert SCRIPT is not None
    argv = [SCRIPT, *work.argv]
    bare_argv = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for statement in work.statements:
        bare_argv += ["-c", statement]
    sample = Sample()
    for _ in range(rounds):
        sides = [("command", argv, command_env), ("bare", bare_argv, bare_env)]
        random.shuffle(sides)
        for side, side_argv, env in sides:
            run = run_child(side_argv, env)
            if run.returncode not in (0, 1):  # 1: rows need a person (list, refresh-all)
                raise SystemExit(f"{side} failed ({run.returncode}): {run.stderr}")
            (sample.command if side == "command" else sample.bare).append(run)
    return sample


def row(size: int, work: Work, sample: Sample, startup: float) -> list[str]:
    seconds = median([run.seconds for run in sample.command])
    bare = median([run.seconds for run in sample.bare])
    rss = max(run.peak_rss_mb for run in sample.command)
    ratio = seconds / bare
    judged = size >= MILLION
    return [
        f"{size:,}",
        " ".join(["gmail-token-store", *work.argv]),
        f"{seconds:.2f}",
        f"{median([run.cpu_seconds for run in sample.command]):.2f}",
        f"{rss:,.0f}",
        f"{bare:.3f}",
        f"{max(run.peak_rss_mb for run in sample.bare):.0f}",
        f"{ratio:.1f}x",
        f"{max(seconds - startup, 0) / bare:.1f}x",
        f"{sample.command[0].output_bytes / 1e6:.1f}/{sample.bare[0].output_bytes / 1e6:.1f}",
        f"<={work.target:g}x: {verdict(ratio, work.target)}; RSS {verdict(rss, RSS_TARGET_MB)}"
        if judged
        else "(judged at 1M)",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="rows, comma-separated")
    parser.add_argument("--million", action="store_true", help="add 1,000,000 rows (minutes)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds below 1M rows")
    parser.add_argument("--million-rounds", type=int, default=1, help="rounds at 1M rows")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--show-sql", action="store_true", help="print the bare SQL")
    parser.add_argument("--latency", type=float, default=0.05, help="endpoint seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="refresh-all's")
    parser.add_argument("--keepalive-sizes", default="10000,100000", help="rows")
    parser.add_argument("--keepalive-rounds", type=int, default=1, help="(a 100k run: ~30 s)")
    parser.add_argument("--processes", default="2,3", help="refresh-all runs at once")
    args = parser.parse_args()
    args.only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(args.only) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    args.sizes = _parse_list(args.sizes)
    if args.million and MILLION not in args.sizes:
        args.sizes.append(MILLION)
    args.keepalive_sizes = _parse_list(args.keepalive_sizes)
    args.processes = _parse_list(args.processes) if "shared" in args.only else []
    return args


def _parse_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


@dataclass
class Report:
    """The tables so far."""

    builds: list[list[str]] = field(default_factory=list)
    checks: list[list[str]] = field(default_factory=list)
    results: list[list[str]] = field(default_factory=list)


def compare(
    args: argparse.Namespace, dsn: str, token_uri: str, env: dict[str, str], startup: float
) -> Report:
    """Each size and command against its bare SQL."""
    assert SCRIPT is not None
    report = Report()
    bare_env = psql_env(dsn)
    for size in args.sizes:
        rounds = args.million_rounds if size >= MILLION else args.rounds
        for mix in (REALISTIC, ALL_FRESH):
            names = [name for name, work in WORK.items() if work.mix is mix and name in args.only]
            if not names:
                continue
            seconds = build_table(dsn, size, mix, token_uri=token_uri)
            report.builds.append([f"{size:,}", mix.name, f"{seconds:.1f}"])
            print(f"built {size:,} rows ({mix.name}) in {seconds:.1f} s", flush=True)
            for name in names if size <= CHECKED_UP_TO else []:  # all before the rounds
                command = run_child([SCRIPT, *WORK[name].argv], env, keep=True)
                slack = command.seconds + 2
                same = bare_sql.same_output(name, command.output, dsn, slack=slack)
                report.checks.append([f"{size:,}", name, same])
            for name in names:
                work = WORK[name]
                sample = measure(work, rounds, env, bare_env)
                report.results.append(row(size, work, sample, startup))
                print(" ".join(report.results[-1][:3]) + " s", flush=True)
    return report


def print_report(report: Report, args: argparse.Namespace, startup: float) -> None:
    print_table(
        "Building the tables (one INSERT ... SELECT in the server, VACUUM ANALYZE, a warm read)",
        ["rows", "table", "s"],
        report.builds,
    )
    if report.checks:
        print_table(
            "The command's output against the bare SQL's (before the rounds)",
            ["rows", "command", "same?"],
            report.checks,
        )
    if report.results:
        print_table(
            f"The command against the bare SQL of the same work (psql), medians of "
            f"{args.rounds} interleaved rounds ({args.million_rounds} at 1M); interpreter "
            f"start-up (--version): {startup:.2f} s; refresh-all on the all-fresh table",
            [
                "rows",
                "command",
                "wall s",
                "CPU s",
                "peak RSS MB",
                "bare SQL s",
                "bare RSS MB",
                "ratio",
                "ratio less start-up",
                "output MB cmd/bare",
                "target (at 1M)",
            ],
            report.results,
        )


def main() -> None:
    args = parse_args()
    assert SCRIPT is not None, "install the package first (make bench does)"
    if args.show_sql:
        for name, work in WORK.items():
            if name in args.only:
                print(f"\n-- {name}: the bare SQL of gmail-token-store {' '.join(work.argv)}")
                print(";\n".join(work.statements) + ";")
    with database() as postgres, FakeTokenEndpoint(latency=args.latency) as endpoint:
        env = dict(
            os.environ,
            GMAIL_TOKEN_STORE_DSN=postgres.dsn,
            # Loopback token URIs are refused otherwise (newer code; ignored by older).
            GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI="1",
        )
        startup = median([run_child([SCRIPT, "--version"], env).seconds for _ in range(5)])
        report = compare(args, postgres.dsn, endpoint.token_uri, env, startup)
        print_report(report, args, startup)
        if args.keepalive_sizes and ("keepalive" in args.only or args.processes):
            keepalive(
                postgres.dsn,
                endpoint,
                env,
                script=SCRIPT,
                sizes=args.keepalive_sizes,
                processes=args.processes,
                rounds=args.keepalive_rounds,
                concurrency=args.concurrency,
                latency=args.latency,
            )


if __name__ == "__main__":
    main()
