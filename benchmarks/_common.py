"""Shared set-up for the benchmarks: a throwaway PostgreSQL with the seed table, rows
(a few by the driver, millions by the server), commands measured as child processes, tables."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND, TokenStoreError, create_table
from gmail_token_store.testing import PostgresServer, throwaway_postgresql


@contextmanager
def database() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL holding an empty gmail_token table."""
    with throwaway_postgresql() as server:
        create_table(server.dsn)
        yield server


def insert_rows(dsn: str, count: int, *, expires_in: float, token_uri: str) -> list[str]:
    """Insert `count` rows in the seed's layout; return their user ids."""
    expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=expires_in)
    user_ids = [str(uuid.uuid4()) for _ in range(count)]
    oauth_config = Jsonb(
        {"client_id": "bench-client", "client_secret": "bench-secret", "token_uri": token_uri}
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO gmail_token (user_id, token_data, oauth_config, scopes, metadata, expiry)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    user_id,
                    Jsonb(
                        {
                            "access_token": f"ya29.bench-{index:08d}-" + "a" * 120,
                            "refresh_token": f"1//bench-refresh-{index:08d}",
                            "token_type": "Bearer",
                        }
                    ),
                    oauth_config,
                    Jsonb([GMAIL_SEND]),
                    Jsonb({"email": f"user{index}@gmail.com", "source_file": "token.json"}),
                    expiry,
                )
                for index, user_id in enumerate(user_ids)
            ],
        )
    return user_ids


@dataclass(frozen=True, slots=True)
class Mix:
    """The shares of a table's rows, in percent: fresh (expiry in 1 h, updated now), due
    (expiry in 1 to 4 minutes: inside the 5-minute refresh margin), dead (an invalid_grant
    recorded in metadata for the stored refresh token) and idle (updated 160 days ago)."""

    name: str
    fresh: int
    due: int
    dead: int
    idle: int

    def __post_init__(self) -> None:
        if self.fresh + self.due + self.dead + self.idle != 100:
            raise ValueError(f"the shares of {self.name} do not add up to 100")

    def count(self, rows: int, kind: str) -> int:
        """How many of `rows` rows `build_table` makes of this kind (row g's kind is g % 100's)."""
        start = {"fresh": 0, "due": self.fresh, "dead": self.fresh + self.due}.get(
            kind, self.fresh + self.due + self.dead
        )
        share = {"fresh": self.fresh, "due": self.due, "dead": self.dead, "idle": self.idle}[kind]
        in_last = sum(1 for slot in range(1, rows % 100 + 1) if start <= slot < start + share)
        return rows // 100 * share + in_last


#: The issue's realistic table.
REALISTIC = Mix("realistic", fresh=90, due=5, dead=3, idle=2)
#: A table where nothing is due, dead or idle.
ALL_FRESH = Mix("all fresh", fresh=100, due=0, dead=0, idle=0)

# One statement, all in the server: md5 makes the token strings, the fingerprint of a dead
# row's refresh token is `_core.record.fingerprint`'s, computed in SQL. Expiries are naive
# UTC by the database's clock (as every writer writes them), updated_at its local time.
_BUILD = """\
INSERT INTO gmail_token
    (user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry, updated_at)
SELECT gen_random_uuid(), 'robeing-' || g %% 50,
       jsonb_build_object(
           'access_token', 'ya29.' || md5(g || ':a') || md5(g || ':b') || md5(g || ':c')
                           || md5(g || ':d') || md5(g || ':e'),
           'refresh_token', r.refresh_token, 'token_type', 'Bearer'),
       %(oauth_config)s::jsonb, jsonb_build_array(%(scope)s::text),
       jsonb_build_object('email', 'user' || g || '@gmail.com', 'source_file', 'token.json')
       || CASE WHEN r.kind = 'dead' THEN jsonb_build_object('refresh_failure', jsonb_build_object(
              'error', 'invalid_grant', 'description', 'Token has been expired or revoked.',
              'at', to_char(r.utc_now - interval '2 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
              'refresh_token_fingerprint', 'sha256:'
                  || left(encode(sha256(convert_to(r.refresh_token, 'UTF8')), 'hex'), 16)))
          ELSE '{}'::jsonb END,
       r.utc_now + CASE r.kind WHEN 'fresh' THEN interval '1 hour'
                               WHEN 'due' THEN make_interval(secs => 60 + g %% 180)
                               WHEN 'dead' THEN interval '-2 days'
                               ELSE interval '-160 days' + interval '1 hour' END,
       LOCALTIMESTAMP - CASE r.kind WHEN 'dead' THEN interval '2 days'
                                    WHEN 'idle' THEN interval '160 days'
                                    ELSE interval '0' END
FROM generate_series(1, %(rows)s) AS g
CROSS JOIN LATERAL (
    SELECT CASE WHEN g %% 100 < %(fresh)s THEN 'fresh'
                WHEN g %% 100 < %(due)s THEN 'due'
                WHEN g %% 100 < %(dead)s THEN 'dead'
                ELSE 'idle' END AS kind,
           '1//0' || md5(g || ':r') || md5(g || ':s') || md5(g || ':t') AS refresh_token,
           now() AT TIME ZONE 'UTC' AS utc_now
) AS r
ORDER BY g"""


def build_table(dsn: str, rows: int, mix: Mix, *, token_uri: str) -> float:
    """Replace gmail_token by `rows` rows of `mix` in the production layout (the schema of
    `create_table`, one INSERT ... SELECT in the server), vacuumed, analyzed and read once
    so every side starts warm; return the seconds it took."""
    began = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gmail_token")
    create_table(dsn)
    oauth_config = {"client_id": "bench-client", "client_secret": "bench-secret"}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            _BUILD,
            {
                "rows": rows,
                "oauth_config": Jsonb({**oauth_config, "token_uri": token_uri}),
                "scope": GMAIL_SEND,
                "fresh": mix.fresh,
                "due": mix.fresh + mix.due,
                "dead": mix.fresh + mix.due + mix.dead,
            },
        )
        conn.execute("VACUUM ANALYZE gmail_token")
        conn.execute("SELECT sum(length(t::text)) FROM gmail_token t")
    return time.perf_counter() - began


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What one child process did: its wall time, peak RSS and output."""

    seconds: float
    #: When it started and ended (time.monotonic(): one clock for every process).
    started: float
    ended: float
    peak_rss_mb: float
    #: CPU seconds it used (user and system).
    cpu_seconds: float
    output_bytes: int
    returncode: int
    #: stdout, when kept (else empty); the end of stderr.
    output: bytes
    stderr: str


# Linux keeps a process's peak RSS across exec, and a child forked from this interpreter
# starts with all of its memory counted: measured directly, psql would "peak" at this
# process's size. So a bare interpreter (about 5 MB, the floor of every figure) forks the
# command and reports its wall time, its own peak RSS and CPU time (os.wait4) on a pipe.
_LAUNCHER = """\
import os, sys, time
report = int(sys.argv[1])
began = time.monotonic()
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
cpu = usage.ru_utime + usage.ru_stime
os.write(report, f"{began} {time.monotonic()} {usage.ru_maxrss} {cpu}".encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class Child:
    """A command started now (through `_LAUNCHER`), its stdout counted, and kept if asked,
    by a thread as it comes (never stored whole otherwise); `finish()` waits for it."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, keep: bool = False) -> None:
        self._keep = keep
        self._kept: list[bytes] = []
        self._bytes = 0
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        report, self._report_end = os.pipe()
        self._report = os.fdopen(report, "rb")
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(self._report_end)]
        self._process = subprocess.Popen(
            [*launcher, shutil.which(argv[0]) or argv[0], *argv[1:]],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            pass_fds=(self._report_end,),
            cwd=tempfile.gettempdir(),  # never import the working tree's package by accident
        )
        os.close(self._report_end)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        while chunk := os.read(stdout.fileno(), 1 << 20):
            self._bytes += len(chunk)
            if self._keep:
                self._kept.append(chunk)
        stdout.close()

    def finish(self) -> ChildRun:
        self._thread.join()
        returncode = self._process.wait()
        report = self._report.read().split()
        self._report.close()
        self._stderr.seek(0)
        stderr = self._stderr.read()[-4000:].decode(errors="replace")
        self._stderr.close()
        if len(report) != 4:
            raise RuntimeError(f"the launcher did not report ({returncode}): {stderr}")
        started, ended, rss_kib, cpu = (
            float(report[0]),
            float(report[1]),
            int(report[2]),
            float(report[3]),
        )
        return ChildRun(
            seconds=ended - started,
            started=started,
            ended=ended,
            peak_rss_mb=rss_kib / 1024,
            cpu_seconds=cpu,
            output_bytes=self._bytes,
            returncode=returncode,
            output=b"".join(self._kept),
            stderr=stderr,
        )


def run_child(argv: Sequence[str], env: Mapping[str, str], *, keep: bool = False) -> ChildRun:
    """Run a command to its end (see `Child`)."""
    return Child(argv, env, keep=keep).finish()


def call_until(
    stop: threading.Event, call: Callable[[], object], successes: list[float], interval: float
) -> None:
    """Call `call` every `interval` seconds until `stop`; note when each call succeeded."""
    while not stop.is_set():
        try:
            call()
            successes.append(time.monotonic())
        except TokenStoreError:
            pass
        time.sleep(interval)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def verdict(value: float, limit: float, *, at_least: bool = False) -> str:
    """Whether `value` is at most `limit` (or, `at_least`, at least `limit`)."""
    met = value >= limit if at_least else value <= limit
    return "meets target" if met else "MISSES target"
