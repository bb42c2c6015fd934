"""Test helpers for gmail_token_store and for the services that use it.

* `FakeTokenEndpoint`: Google's OAuth token endpoint (and its consent redirect), served
  over real HTTP on loopback. It records every request and answers what a test scripts:
  success, `invalid_grant`, client errors, 5xx, 429, a non-JSON 502, slowly, or not at all.
* `throwaway_postgresql()`: a private PostgreSQL server for one test session (needs the
  `testing` extra: ``pip install gmail-token-store[testing]``).
* `throwaway_pgbouncer()`: a PgBouncer in front of it, transaction pooling by default.
* `run_herd()`: many processes of many threads calling get_credentials at the same moment.

PostgreSQL and PgBouncer refuse to run as root; when the tests run as root (CI, containers)
both are started as the unprivileged ``postgres`` account through small `setpriv` wrappers.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import glob
import json
import multiprocessing
import os
import pwd
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

__all__ = [
    "FakeTokenEndpoint",
    "HerdCall",
    "PgBouncerServer",
    "PostgresServer",
    "Reply",
    "TokenRequest",
    "run_herd",
    "throwaway_pgbouncer",
    "throwaway_postgresql",
]


class Reply(enum.Enum):
    """What the fake endpoint answers to one token request."""

    OK = "ok"
    INVALID_GRANT = "invalid_grant"  # 400: revoked / expired refresh token
    INVALID_CLIENT = "invalid_client"  # 401
    UNAUTHORIZED_CLIENT = "unauthorized_client"  # 400
    DELETED_CLIENT = "deleted_client"  # 401
    SERVER_ERROR = "server_error"  # 500, JSON body
    UNAVAILABLE = "temporarily_unavailable"  # 503, JSON body
    RATE_LIMITED = "rate_limited"  # 429, JSON body
    BAD_GATEWAY_HTML = "bad_gateway_html"  # 502, an HTML page: what a proxy says in an outage
    HANG = "hang"  # accepts the request and never answers (until release() or close())


_ERROR_ANSWERS: dict[Reply, tuple[int, str]] = {
    Reply.INVALID_GRANT: (400, "Token has been expired or revoked."),
    Reply.INVALID_CLIENT: (401, "The OAuth client was not found."),
    Reply.UNAUTHORIZED_CLIENT: (400, "Unauthorized"),
    Reply.DELETED_CLIENT: (401, "The OAuth client was deleted."),
    Reply.SERVER_ERROR: (500, "Internal error"),
    Reply.UNAVAILABLE: (503, "The service is currently unavailable."),
    Reply.RATE_LIMITED: (429, "Rate limit exceeded"),
}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request the fake endpoint received, and what it answered."""

    grant_type: str
    client_id: str | None
    refresh_token: str | None = field(repr=False)
    client_secret: str | None = field(repr=False)
    code: str | None
    reply: Reply
    received_at: float
    issued_access_token: str | None = field(default=None, repr=False)


class FakeTokenEndpoint:
    """Google's token endpoint on http://127.0.0.1:<port>/token, for tests and demos.

    Answers, in order of precedence: replies queued with `script()`, `invalid_grant` for a
    refresh token passed to `revoke()`, then `default` (Reply.OK unless changed). Each
    answer waits `latency` seconds first. Use as a context manager, or call `close()`.

    Args:
        expires_in: lifetime in seconds of the access tokens it issues.
        latency: seconds to wait before each answer.
        rotate_refresh_tokens: send a new refresh token with every refresh.
        granted_scopes: the `scope` to put in refresh answers (None: leave it out).
        max_hang: seconds a HANG reply holds the connection at most.
    """

    def __init__(
        self,
        *,
        expires_in: int = 3599,
        latency: float = 0.0,
        rotate_refresh_tokens: bool = False,
        granted_scopes: Sequence[str] | None = None,
        max_hang: float = 60.0,
    ) -> None:
        self.expires_in = expires_in
        self.latency = latency
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.granted_scopes = list(granted_scopes) if granted_scopes is not None else None
        self.default = Reply.OK
        self.max_hang = max_hang
        self._lock = threading.Lock()
        self._scripted: list[Reply] = []
        self._revoked: set[str] = set()
        self._codes: dict[str, list[str]] = {}
        self._requests: list[TokenRequest] = []
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.endpoint = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits up to one interval
            name="fake-token-endpoint",
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        """The consent page: redirects at once to the redirect_uri with a code."""
        return f"{self.base_url}/auth"

    @property
    def requests(self) -> list[TokenRequest]:
        """Every token request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def refresh_requests(self) -> list[TokenRequest]:
        """The refresh_token grants received so far."""
        return [r for r in self.requests if r.grant_type == "refresh_token"]

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then fall back as usual."""
        with self._lock:
            self._scripted.extend(replies)

    def revoke(self, refresh_token: str) -> None:
        """Answer `invalid_grant` to every later refresh with this refresh token."""
        with self._lock:
            self._revoked.add(refresh_token)

    def release(self) -> None:
        """Let requests held by HANG go (their connections are closed without an answer)."""
        self._release.set()

    def client_config(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """A Google "installed app" client secrets document that points at this endpoint."""
        return {
            "installed": {
                "client_id": client_id,
                "client_secret": client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://localhost"],
            }
        }

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTokenEndpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeTokenEndpoint {self.token_uri} requests={len(self._requests)}>"

    # --- called by the handler threads ------------------------------------------------------

    def _choose(self, refresh_token: str | None) -> Reply:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
            if refresh_token is not None and refresh_token in self._revoked:
                return Reply.INVALID_GRANT
            return self.default

    def _issue_code(self, scopes: list[str]) -> str:
        code = "4/fake-code-" + secrets.token_hex(8)
        with self._lock:
            self._codes[code] = scopes
        return code

    def _success_body(
        self, access_token: str, grant_type: str, code_scopes: list[str] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }
        if grant_type == "authorization_code":
            body["refresh_token"] = "1//fake-refresh-" + secrets.token_urlsafe(24)
            body["scope"] = " ".join(code_scopes or [])
            return body
        if self.rotate_refresh_tokens:
            body["refresh_token"] = "1//fake-refresh-" + secrets.token_urlsafe(24)
        if self.granted_scopes is not None:
            body["scope"] = " ".join(self.granted_scopes)
        return body

    def _answer(self, form: dict[str, str]) -> tuple[int, str, bytes]:
        grant_type = form.get("grant_type", "")
        refresh_token = form.get("refresh_token")
        code = form.get("code")
        reply = self._choose(refresh_token)
        if self.latency:
            time.sleep(self.latency)
        code_scopes: list[str] | None = None
        if reply is Reply.OK and grant_type == "authorization_code":
            with self._lock:
                code_scopes = self._codes.pop(code or "", None)
            if code_scopes is None:
                reply = Reply.INVALID_GRANT
        elif reply is Reply.OK and grant_type != "refresh_token":
            reply = Reply.UNAUTHORIZED_CLIENT
        issued = None
        if reply is Reply.OK:
            issued = "ya29.fake-" + secrets.token_urlsafe(24)
            body = self._success_body(issued, grant_type, code_scopes)
            answer = (200, "application/json", json.dumps(body).encode())
        elif reply is Reply.BAD_GATEWAY_HTML:
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            answer = (502, "text/html", page)
        elif reply is Reply.HANG:
            answer = (0, "", b"")
        else:
            status, description = _ERROR_ANSWERS[reply]
            error = "rate_limit_exceeded" if reply is Reply.RATE_LIMITED else reply.value
            payload = {"error": error, "error_description": description}
            answer = (status, "application/json", json.dumps(payload).encode())
        with self._lock:
            self._requests.append(
                TokenRequest(
                    grant_type=grant_type,
                    client_id=form.get("client_id"),
                    refresh_token=refresh_token,
                    client_secret=form.get("client_secret"),
                    code=code,
                    reply=reply,
                    received_at=time.time(),
                    issued_access_token=issued,
                )
            )
        if reply is Reply.HANG:
            self._release.wait(self.max_hang)
        return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: FakeTokenEndpoint


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like Google's endpoint
    # Headers and body go out in separate writes: without TCP_NODELAY a kept-alive
    # connection waits for the client's delayed ACK (40 ms) between them.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/token":
            self._send(404, "application/json", b'{"error": "not_found"}')
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            form = {key: str(value) for key, value in json.loads(raw or "{}").items()}
        else:
            form = {key: values[0] for key, values in parse_qs(raw).items()}
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Basic "):  # RFC 6749 2.3.1: the client may authenticate so
            decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            client_id, _, client_secret = decoded.partition(":")
            form.setdefault("client_id", unquote_plus(client_id))
            form.setdefault("client_secret", unquote_plus(client_secret))
        status, content_type, body = self.server.endpoint._answer(form)
        if status == 0:  # HANG: drop the connection without a word
            self.close_connection = True
            return
        self._send(status, content_type, body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/auth":
            self._send(404, "text/plain", b"not found")
            return
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        redirect_uri = query.get("redirect_uri", "")
        if urlsplit(redirect_uri).hostname not in ("localhost", "127.0.0.1"):
            self._send(400, "text/plain", b"redirect_uri must be on loopback")
            return
        code = self.server.endpoint._issue_code(query.get("scope", "").split())
        target = redirect_uri + "?" + urlencode({"code": code, "state": query.get("state", "")})
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)


# --- servers started by the tests ------------------------------------------------------------


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
        self._server.terminate()
        self._server.start()

    def stop(self) -> None:
        try:
            self._server.stop()
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


# --- herds -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HerdCall:
    """One get_credentials call of a herd: the token it got (or the error), and how long."""

    token: str | None = field(repr=False)
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _HerdOrder:
    dsn: str = field(repr=False)
    user_id: str
    threads: int
    store_options: dict[str, Any]


def _herd_member(order: _HerdOrder, start: Any, results: Any) -> None:
    """One process of a herd (runs in a spawned child): `threads` callers released together."""
    from ._store import TokenStore  # noqa: PLC0415 - keep `testing` importable on its own

    user_id = order.user_id
    with TokenStore(order.dsn, **order.store_options) as store:
        store.check(user_id)  # open a connection first, so the herd starts together
        local_start = threading.Barrier(order.threads)

        def call() -> None:
            local_start.wait(timeout=60)
            began = time.monotonic()
            try:
                token = store.get_credentials(user_id).token
                results.put(HerdCall(token, time.monotonic() - began))
            except Exception as exc:  # reported to the parent, which decides
                error = f"{type(exc).__name__}: {exc}"
                results.put(HerdCall(None, time.monotonic() - began, error))

        callers = [threading.Thread(target=call) for _ in range(order.threads)]
        start.wait(timeout=120)
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)


def run_herd(
    dsn: str,
    user_id: str,
    *,
    processes: int,
    threads: int,
    store_options: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> list[HerdCall]:
    """Call get_credentials from `processes` x `threads` callers released at one moment.

    Each process is started with "spawn" and builds its own TokenStore(dsn, **store_options),
    like a separate replica of a service.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    members = [
        context.Process(
            target=_herd_member,
            args=(_HerdOrder(dsn, user_id, threads, store_options or {}), start, results),
        )
        for _ in range(processes)
    ]
    for member in members:
        member.start()
    calls: list[HerdCall] = []
    deadline = time.monotonic() + timeout
    try:
        while len(calls) < processes * threads and time.monotonic() < deadline:
            try:
                calls.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(member.is_alive() for member in members):
                    break  # every process is gone: nothing more will come
    finally:
        for member in members:
            member.join(timeout=30)
            if member.is_alive():
                member.kill()
                member.join(timeout=10)
    missing = processes * threads - len(calls)
    exits = [member.exitcode for member in members]
    lost = HerdCall(None, 0.0, f"no answer from this caller (process exit codes {exits})")
    return calls + [lost] * missing
