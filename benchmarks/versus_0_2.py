"""This version against 0.2.0, side by side in one run: the same scenarios on one database.

0.2.0 is built from its commit (`git archive`) into its own virtualenv under `.bench/`
(reused by later runs). Each version runs `_versus_worker.py` in its own process with its
own store; rounds alternate between the two in a shuffled order, so machine noise hits
both alike. Scenarios: the miss path (`cache_ttl=0`), a cache hit, the locked refresh with
a token request (`refresh(force=True)` against the fake endpoint), and `check_all()` over
1,000 rows. The table shows each side's median and the ratio this / 0.2.0 (target: within
5%, i.e. at most 1.05).

Run: `.venv/bin/python benchmarks/versus_0_2.py [--rounds N]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from gmail_token_store.testing import FakeTokenEndpoint

from _common import database, insert_rows, median, print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
#: The commit 0.2.0 was released from.
RELEASE_COMMIT = "5233198"
CALLS = {"miss": 1000, "hit": 20000, "refresh": 40, "check_all": 3}


def release_python(commit: str = RELEASE_COMMIT) -> Path:
    """The interpreter of a virtualenv holding the library as it was at `commit`."""
    home = ROOT / ".bench" / f"gmail-token-store-{commit}"
    python = home / "venv" / "bin" / "python"
    if python.exists():
        return python
    source = home / "source"
    source.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{source}[testing]"], check=True
    )
    return python


class Side:
    """One version's worker process."""

    def __init__(self, python: Path, dsn: str, users_file: str) -> None:
        self.process = subprocess.Popen(
            [str(python), str(ROOT / "benchmarks" / "_versus_worker.py"), dsn, users_file],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tempfile.gettempdir(),  # never import the working tree's package by accident
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        answer: dict[str, Any] = json.loads(stdout.readline())
        return answer

    def run(self, scenario: str, calls: int) -> float:
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"scenario": scenario, "calls": calls}) + "\n")
        stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    old_python = release_python()
    with (
        database() as postgres,
        FakeTokenEndpoint() as endpoint,
        tempfile.TemporaryDirectory() as tmp,
    ):
        fresh = insert_rows(postgres.dsn, 1000, expires_in=86_400, token_uri=endpoint.token_uri)
        due = insert_rows(postgres.dsn, 20, expires_in=86_400, token_uri=endpoint.token_uri)
        users_file = str(Path(tmp) / "users.json")
        Path(users_file).write_text(json.dumps({"fresh": fresh, "due": due}))
        sides = {
            "this version": Side(Path(sys.executable), postgres.dsn, users_file),
            "0.2.0": Side(old_python, postgres.dsn, users_file),
        }
        results: dict[tuple[str, str], list[float]] = {
            (side, scenario): [] for side in sides for scenario in CALLS
        }
        try:
            for round_number in range(args.rounds + 1):
                work = [(side, scenario) for side in sides for scenario in CALLS]
                random.shuffle(work)
                for side, scenario in work:
                    seconds = sides[side].run(scenario, CALLS[scenario])
                    if round_number:  # round 0 warms up connections and prepared statements
                        results[(side, scenario)].append(seconds * 1e6)
        finally:
            for side_process in sides.values():
                side_process.close()
    rows = []
    worst = 0.0
    for scenario in CALLS:
        new = median(results[("this version", scenario)])
        old = median(results[("0.2.0", scenario)])
        worst = max(worst, new / old)
        rows.append([scenario, f"{new:.1f}", f"{old:.1f}", f"{new / old:.3f}"])
    print_table(
        f"This version against 0.2.0: microseconds per call, median of {args.rounds} rounds",
        ["scenario", "this us", "0.2.0 us", "ratio"],
        rows,
    )
    print(f"\nTarget: every ratio <= 1.05: worst {worst:.3f}  {verdict(worst, 1.05)}")


if __name__ == "__main__":
    main()
