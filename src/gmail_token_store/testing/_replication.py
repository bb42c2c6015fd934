"""A throwaway primary with a real streaming standby, for failover tests.

The standby is made with `pg_basebackup -R` (streaming replication, asynchronous, as
PostgreSQL's default), runs on its own port, and can be stopped, started and promoted
(`pg_promote()`). `dsn` is the libpq multi-host DSN services use to follow the primary:
both hosts, `target_session_attrs=read-write`. The standby is a copy of the primary: same
`postgres` password, asked on every connection (and the primary asks it of the standby's
replication connection too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from ._servers import (
    _MASK,
    PostgresServer,
    _Account,
    _find_binary,
    _free_port,
    _url,
    _wait_for_port,
)

#: The standby's own settings: the primary's, and a port and socket directory of its own.
_STANDBY_ARGS = (
    "-c logging_collector=off -c fsync=off -c synchronous_commit=off"
    " -c full_page_writes=off -c max_connections=300"
)


class StandbyServer:
    """A streaming standby of a PostgresServer: `start_serving`, `stop_serving`, `promote`."""

    def __init__(self, primary: PostgresServer) -> None:
        self._password = primary.password  # a copy: the same superuser, the same password
        self.base_dir = Path(tempfile.mkdtemp(prefix="gmail-token-store-standby-"))
        self.data = self.base_dir / "data"
        self.sockets = self.base_dir / "tmp"
        try:
            self._account = _Account(self.base_dir)
            for directory in (self.data, self.sockets):
                directory.mkdir(mode=0o700)
                self._account.own(directory)
            self._postgres = self._account.command(_find_binary("postgres", "postgresql"))
            self._base_backup(primary.port)
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        self.port = _free_port()
        self._log = self.base_dir / "standby.log"
        self._account.private_file(self._log, readable=False)
        self._process: subprocess.Popen[bytes] | None = None
        self.start_serving()

    def _base_backup(self, primary_port: int) -> None:
        """Copy the primary into `data` as a streaming standby of it."""
        basebackup = self._account.command(_find_binary("pg_basebackup", "postgresql"))
        result = subprocess.run(
            [
                basebackup,
                "-D",
                str(self.data),
                "-R",  # standby.signal and primary_conninfo: a streaming standby
                "-X",
                "stream",
                "--checkpoint=fast",  # not the next scheduled checkpoint, minutes away
                "-h",
                "127.0.0.1",
                "-p",
                str(primary_port),
                "-U",
                "postgres",
                "-w",  # never prompt
            ],
            # In the environment, not on the command line other accounts can read: -R
            # writes it into primary_conninfo (postgresql.auto.conf, the server's own).
            env={**os.environ, "PGPASSWORD": self._password},
            capture_output=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed:\n{result.stderr.decode(errors='replace')}")

    @property
    def dsn(self) -> str:
        return _url(self.port, self._password)

    def __repr__(self) -> str:
        return f"<StandbyServer {_url(self.port, _MASK)}>"

    def start_serving(self) -> None:
        """Start the server (as a standby, unless it was promoted); returns once it accepts."""
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self._postgres,
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.sockets),
                    *_STANDBY_ARGS.split(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self._process, self._log, timeout=60)
        deadline = time.monotonic() + 60
        while True:  # listening is not yet accepting: wait for a consistent state
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop_serving(self) -> None:
        """Fast shutdown: clients are disconnected."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def promote(self) -> None:
        """Make it the primary (`pg_promote()`); returns once it accepts writes."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_promote(wait => true, wait_seconds => 60)")

    def stop(self) -> None:
        try:
            self.stop_serving()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class ReplicatedPostgres:
    """A throwaway primary (`primary`) and its streaming standby (`standby`)."""

    def __init__(self) -> None:
        self.primary = PostgresServer()
        try:
            self.standby = StandbyServer(self.primary)
        except BaseException:
            self.primary.stop()
            raise

    @property
    def dsn(self) -> str:
        """Both servers, for whichever accepts writes: what a service configures."""
        return self._dsn(self.primary.password)

    def _dsn(self, password: str) -> str:
        return (
            f"postgresql://postgres:{password}@127.0.0.1:{self.primary.port},"
            f"127.0.0.1:{self.standby.port}/test?target_session_attrs=read-write"
        )

    def __repr__(self) -> str:
        return f"<ReplicatedPostgres {self._dsn(_MASK)}>"

    def wait_for_replay(self, timeout: float = 30.0) -> None:
        """Return once the standby has replayed everything the primary has written."""
        with psycopg.connect(self.primary.dsn, autocommit=True) as primary:
            # The insert location: with synchronous_commit off (these servers), a commit's
            # WAL may not be written yet, and the write location would not include it.
            row = primary.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        target = row[0] if row is not None else "0/0"
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.standby.dsn, autocommit=True) as standby:
            while True:
                caught_up = standby.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if caught_up and caught_up[0]:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the standby did not catch up with the primary")
                time.sleep(0.02)

    def pause_replay(self) -> None:
        """Stop the standby applying what it receives: it lags from now on (reads there
        see the table as it was), until `resume_replay()`."""
        with psycopg.connect(self.standby.dsn, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with psycopg.connect(self.standby.dsn, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        try:
            self.standby.stop()
        finally:
            self.primary.stop()


@contextlib.contextmanager
def throwaway_replicated_postgresql() -> Iterator[ReplicatedPostgres]:
    """Start a private primary and a streaming standby; stop and delete both afterwards."""
    servers = ReplicatedPostgres()
    try:
        yield servers
    finally:
        servers.stop()
