"""Throwaway PostgreSQL and PgBouncer servers for tests, from the machine's Debian binaries.

They run in consumers' CI, on shared runners and developer laptops, so no other local
account may use them: every connection, TCP or Unix socket, replication included, logs in
with a random password per server (scram-sha-256, set by initdb: there is never a `trust`
moment), and `dsn` carries it. PostgreSQL and PgBouncer refuse to run as root; when the
tests run as root (CI, containers) both are started as the unprivileged ``postgres``
account through small `setpriv` wrappers that only root can change (see `_Account`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: What reprs show instead of a password.
_MASK = "***"


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
    """Who runs the servers: ourselves, or the `postgres` account when we are root.

    As root, what root executes (the `setpriv` wrappers) lives in `<base_dir>/bin`, made by
    root and writable by root only, and `base_dir` itself stays root's: a process of the
    `postgres` account (the server, or anything a superuser session runs) must not be able
    to swap a wrapper that root runs at the next start. Only the data and socket
    directories are handed to the account (`own`).
    """

    def __init__(self, base_dir: Path) -> None:
        self.drop = os.geteuid() == 0
        self.uid, self.gid = os.geteuid(), os.getegid()
        self._bin = base_dir / "bin"
        self._wrappers: dict[str, str] = {}
        if self.drop:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root and there is no `postgres` account to run PostgreSQL as: "
                    "install the Debian package `postgresql` (it creates the account)"
                ) from None
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            # The account may pass through (to its own directories), not list or write.
            base_dir.chmod(0o711)
            self._bin.mkdir(mode=0o755)

    def own(self, path: Path) -> None:
        """Hand `path` (a data or socket directory) to the account."""
        if self.drop:
            os.chown(path, self.uid, self.gid)

    def private_file(self, path: Path, text: str = "", *, readable: bool = True) -> None:
        """Write a file (a password, a config, a log) the account may not change.

        Created exclusively, so nothing planted at `path` is followed or reused. As root it
        stays root's; if `readable`, the account's group may read it, else no one but us.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            if self.drop and readable:
                os.fchown(fd, 0, self.gid)
                os.fchmod(fd, 0o640)
            file.write(text)

    def command(self, binary: str) -> str:
        """Return an executable running `binary` as this account (`binary` itself if not root)."""
        if not self.drop:
            return binary
        if binary not in self._wrappers:
            wrapper = self._bin / f"as-postgres-{Path(binary).name}"
            fd = os.open(wrapper, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
            with os.fdopen(fd, "w") as file:
                file.write(
                    "#!/bin/sh\n"
                    "# PostgreSQL and PgBouncer refuse to run as root: run them as postgres,\n"
                    "# with a fresh environment (root's may hold a CI job's secrets, which\n"
                    "# the postgres account could read in /proc); only a password passed for\n"
                    "# pg_basebackup and the locale go through.\n"
                    "cd /\n"
                    f"exec setpriv --reuid={self.uid} --regid={self.gid} --init-groups"
                    " --reset-env -- /usr/bin/env LC_ALL=C.UTF-8"
                    ' ${PGPASSWORD:+"PGPASSWORD=$PGPASSWORD"}'
                    f' {shlex.quote(binary)} "$@"\n'
                )
            self._wrappers[binary] = str(wrapper)
        return self._wrappers[binary]


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


def _url(port: int, password: str) -> str:
    """The `test` database on 127.0.0.1:`port`, as the `postgres` superuser."""
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/test"


def _new_password() -> str:
    """A random password, URL-safe so that it goes into a DSN as it is."""
    return secrets.token_urlsafe(24)


def _postgresql_class() -> Any:
    """testing.postgresql's server class, logging in with the password for its own checks.

    It connects (with pg8000) to see that the server is up and to create `test`; its
    `dsn()` gives those connections no password, so a subclass adds it.
    """
    try:
        import testing.postgresql  # type: ignore[import-untyped]  # noqa: PLC0415 - optional extra
    except ImportError:
        raise RuntimeError(
            "throwaway_postgresql() needs testing.postgresql: "
            "pip install 'gmail-token-store[testing]'"
        ) from None

    # Named as its base: testing.postgresql names the log and its messages after the class.
    class Postgresql(testing.postgresql.Postgresql):  # type: ignore[misc]  # it is untyped
        def dsn(self, **kwargs: Any) -> dict[str, Any]:
            params: dict[str, Any] = super().dsn(**kwargs)
            params.setdefault("password", self.settings["password"])
            return params

    return Postgresql


class PostgresServer:
    """A throwaway PostgreSQL: `dsn` for connecting, `restart()` to bounce it.

    Its `postgres` superuser has a random `password` (in `dsn`); the server asks for it
    on every connection (scram-sha-256), so no other local account can use the server.
    """

    def __init__(self) -> None:
        server_class = _postgresql_class()
        initdb = _find_binary("initdb", "postgresql")
        postgres = _find_binary("postgres", "postgresql")
        self._password = _new_password()
        self.base_dir = Path(tempfile.mkdtemp(prefix="gmail-token-store-pg-"))
        try:
            self._account = _Account(self.base_dir)
            for directory in (self.base_dir / "data", self.base_dir / "tmp"):
                directory.mkdir(mode=0o700)
                self._account.own(directory)
            self._initdb(initdb)  # testing.postgresql's own initdb would trust everyone
            # Its log (the server's output, which may quote statements): ours alone.
            self._account.private_file(self.base_dir / "Postgresql.log", readable=False)
            self._server = server_class(
                base_dir=str(self.base_dir),
                initdb=self._account.command(initdb),  # not run: the data directory exists
                postgres=self._account.command(postgres),
                # Durability is not what these servers are for; speed and room for herds are.
                postgres_args="-h 127.0.0.1 -F -c logging_collector=off -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
                " -c password_encryption=scram-sha-256",
                password=self._password,
            )
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        self.port: int = self._server.settings["port"]

    def _initdb(self, initdb: str) -> None:
        """Create the cluster with scram-sha-256 everywhere and the superuser's password."""
        password_file = self.base_dir / "initdb-password"
        self._account.private_file(password_file, self._password + "\n")
        try:
            result = subprocess.run(
                [
                    self._account.command(initdb),
                    "-D",
                    str(self.base_dir / "data"),
                    "--lc-messages=C",
                    "--username=postgres",
                    "--auth=scram-sha-256",  # local, host and replication lines alike
                    f"--pwfile={password_file}",
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stderr.decode(errors='replace')}")

    @property
    def password(self) -> str:
        """The `postgres` superuser's password: random, one per server; `dsn` has it."""
        return self._password

    @property
    def dsn(self) -> str:
        return _url(self.port, self._password)

    def __repr__(self) -> str:
        return f"<PostgresServer {_url(self.port, _MASK)}>"

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
    """A throwaway PgBouncer in front of one PostgreSQL; `dsn` points at the bouncer.

    Clients log in as `postgres` with `password` (scram-sha-256), and PgBouncer logs in
    to the backend with the same one: pass the backend's (`PostgresServer.password`).
    Without one it makes up its own, for a backend that asks for none.
    """

    def __init__(
        self, backend_port: int, *, pool_mode: str = "transaction", password: str | None = None
    ) -> None:
        binary = _find_binary("pgbouncer", "pgbouncer")
        self._password = _new_password() if password is None else password
        self.base_dir = Path(tempfile.mkdtemp(prefix="gmail-token-store-pgbouncer-"))
        try:
            account = _Account(self.base_dir)
            self.port = _free_port()
            userlist = self.base_dir / "userlist.txt"
            # Plain text, not a SCRAM secret: PgBouncer needs it to log in to the backend.
            quoted = self._password.replace('"', '""')
            account.private_file(userlist, f'"postgres" "{quoted}"\n')
            config = self.base_dir / "pgbouncer.ini"
            account.private_file(
                config,
                "[databases]\n"
                f"* = host=127.0.0.1 port={backend_port}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = scram-sha-256\n"
                f"auth_file = {userlist}\n"
                f"pool_mode = {pool_mode}\n"
                "max_client_conn = 500\n"
                "default_pool_size = 20\n"
                "ignore_startup_parameters = extra_float_digits,options\n",
            )
            self._log = self.base_dir / "pgbouncer.log"
            account.private_file(self._log, readable=False)
            with self._log.open("wb") as log:
                self._process = subprocess.Popen(
                    [account.command(binary), str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        try:
            _wait_for_port(self.port, self._process, self._log, timeout=15)
        except BaseException:
            self.stop()
            raise

    @property
    def password(self) -> str:
        """What clients log in with (as `postgres`); `dsn` has it."""
        return self._password

    @property
    def dsn(self) -> str:
        return _url(self.port, self._password)

    def __repr__(self) -> str:
        return f"<PgBouncerServer {_url(self.port, _MASK)}>"

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
    backend_port: int, *, pool_mode: str = "transaction", password: str | None = None
) -> Iterator[PgBouncerServer]:
    """Start PgBouncer in front of the PostgreSQL on `backend_port`; stop it afterwards.

    `password` is the backend's for `postgres` (a `PostgresServer`'s `.password`); the
    bouncer asks its clients for the same one, and its `dsn` carries it.
    """
    server = PgBouncerServer(backend_port, pool_mode=pool_mode, password=password)
    try:
        yield server
    finally:
        server.stop()
