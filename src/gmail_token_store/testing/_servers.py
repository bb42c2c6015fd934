"""Throwaway PostgreSQL and PgBouncer servers for tests, from the machine's Debian binaries.

PostgreSQL and PgBouncer refuse to run as root; when the tests run as root (CI,
containers) both are started as the unprivileged ``postgres`` account through small
`setpriv` wrappers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _find_binary(name: str, package: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    for candidate in [*candidates, found]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"the {name} binary was not found: install the Debian package `{package}` "
        f"(apt-get install {package}) or put {name} on PATH"
    )


class _Account:
    """Who runs the servers: ourselves, or the `postgres` account when we are root."""

    def __init__(self) -> None:
        self.drop = os.geteuid() == 0
        if self.drop:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root and there is no `postgres` account to run PostgreSQL as: "
                    "install the Debian package `postgresql` (it creates the account)"
                ) from None
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def own(self, path: Path) -> None:
        if self.drop:
            os.chown(path, self.uid, self.gid)

    def command(self, binary: str, workdir: Path) -> str:
        """Return an executable running `binary` as this account (`binary` itself if not root)."""
        if not self.drop:
            return binary
        wrapper = workdir / f"as-postgres-{Path(binary).name}"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# PostgreSQL and PgBouncer refuse to run as root: run them as the postgres account.\n"
            "cd /\n"
            f'exec setpriv --reuid={self.uid} --regid={self.gid} --init-groups -- {binary} "$@"\n'
        )
        wrapper.chmod(0o755)
        return str(wrapper)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited at start-up:\n{log.read_text(errors='replace')}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout:g} s")


class PostgresServer:
    """A throwaway PostgreSQL: `dsn` for connecting, `restart()` to bounce it."""

    def __init__(self) -> None:
        try:
            import testing.postgresql  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
        except ImportError:
            raise RuntimeError(
                "throwaway_postgresql() needs testing.postgresql: "
                "pip install 'gmail-token-store[testing]'"
            ) from None
        initdb = _find_binary("initdb", "postgresql")
        postgres = _find_binary("postgres", "postgresql")
        self._account = _Account()
        self.base_dir = Path(tempfile.mkdtemp(prefix="gmail-token-store-pg-"))
        for directory in (self.base_dir, self.base_dir / "data", self.base_dir / "tmp"):
            directory.mkdir(mode=0o700, exist_ok=True)
            self._account.own(directory)
        try:
            self._server = testing.postgresql.Postgresql(
                base_dir=str(self.base_dir),
                initdb=self._account.command(initdb, self.base_dir),
                postgres=self._account.command(postgres, self.base_dir),
                # Durability is not what these servers are for; speed and room for herds are.
                postgres_args="-h 127.0.0.1 -F -c logging_collector=off -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            )
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        self.port: int = self._server.settings["port"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def restart(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected) and start it again."""
        self.stop_serving()
        self.start_serving()

    def stop_serving(self) -> None:
        """Stop the server (fast shutdown); `start_serving()` brings it back, same data."""
        self._server.terminate()

    def start_serving(self) -> None:
        """Start the server again after `stop_serving()` (returns once it accepts)."""
        self._server.start()

    def stop(self) -> None:
        try:
            self._server.stop(signal.SIGINT)  # fast shutdown: clients are disconnected
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgresql() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL with a `test` database; stop and delete it afterwards."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


class PgBouncerServer:
    """A throwaway PgBouncer in front of one PostgreSQL; `dsn` points at the bouncer."""

    def __init__(self, backend_port: int, *, pool_mode: str = "transaction") -> None:
        binary = _find_binary("pgbouncer", "pgbouncer")
        account = _Account()
        self.base_dir = Path(tempfile.mkdtemp(prefix="gmail-token-store-pgbouncer-"))
        account.own(self.base_dir)
        self.port = _free_port()
        (self.base_dir / "userlist.txt").write_text('"postgres" ""\n')
        config = self.base_dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={backend_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.base_dir / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            "max_client_conn = 500\n"
            "default_pool_size = 20\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        for path in self.base_dir.iterdir():
            account.own(path)
        self._log = self.base_dir / "pgbouncer.log"
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [account.command(binary, self.base_dir), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_port(self.port, self._process, self._log, timeout=15)
        except BaseException:
            self.stop()
            raise

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self.base_dir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_pgbouncer(
    backend_port: int, *, pool_mode: str = "transaction"
) -> Iterator[PgBouncerServer]:
    """Start PgBouncer in front of the PostgreSQL on `backend_port`; stop it afterwards."""
    server = PgBouncerServer(backend_port, pool_mode=pool_mode)
    try:
        yield server
    finally:
        server.stop()
