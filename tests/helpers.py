"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import psycopg

from gmail_token_store import AsyncTokenStore, testing
from gmail_token_store.testing import FakeTokenEndpoint

T = TypeVar("T")

#: The password in the DSNs the CLI tests give the command for a server that is not there
#: or refuses it: it must never show (nor must the throwaway server's own, in its DSN).
DSN_PASSWORD = "cli-dsn-password-" + "Q" * 8
SCRIPT = shutil.which("gmail-token-store", path=os.path.dirname(sys.executable))
CLIENT_SECRET = "seed-client-secret-" + "S" * 16
#: The secret the consent tests sign reconnect links and states with.
CONSENT_SECRET = "consent-signing-secret-" + "K" * 24
#: The keys of auth-server's answers (../shared/reference/auth-server.md), written out here
#: rather than taken from the library so that a test of its shapes can fail.
AUTH_SERVER_CHECK_KEYS = {
    "status",
    "user_id",
    "email",
    "has_token",
    "has_access_token",
    "has_refresh_token",
    "has_oauth_config",
    "is_expired",
    "remaining_seconds",
    "needs_refresh",
}
AUTH_SERVER_REFRESH_KEYS = {"status", "user_id", "email", "expires_in", "access_token"}


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def call_together(callers: int, call: Callable[[], T]) -> list[T]:
    """Run `call` from `callers` threads released at the same moment; return the results."""
    barrier = threading.Barrier(callers)
    results: list[T] = []

    def caller() -> None:
        barrier.wait(timeout=10)
        results.append(call())

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def herd(kind: str, processes: int, callers: int) -> dict[str, int]:
    """`processes` of `callers` threads (sync stores) or coroutines (async stores)."""
    if kind == "sync":
        return {"processes": processes, "threads": callers}
    return {"processes": 0, "threads": 0, "async_processes": processes, "coroutines": callers}


def run_herd(dsn: str, user_id: str, **herd: Any) -> list[tuple[str, float]]:
    """The herd from gmail_token_store.testing; fails the test if any caller failed."""
    calls = testing.run_herd(dsn, user_id, **herd)
    errors = [call.error for call in calls if call.error]
    assert not errors, errors
    return [(call.token or "", call.seconds) for call in calls]


class StatementCounter:
    """Counts what a connection sends, from libpq's protocol trace."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()

    def attach(self, conn: psycopg.Connection[Any]) -> None:
        conn.pgconn.trace(self.file.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def reset(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def sent(self) -> list[str]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.seek(0)
        lines = [line.split("\t") for line in self.file.read().splitlines()]
        return [
            parts[2] + ":" + (parts[3] if len(parts) > 3 else "")
            for parts in lines
            if parts[0] == "F"
        ]

    def close(self) -> None:
        self.file.close()


class _SyncStream:
    """An AsyncStatusStream driven on a facade's loop, as a StatusStream."""

    def __init__(self, facade: AsyncFacade, stream: Any) -> None:
        self._facade, self._stream = facade, stream
        self.summary = stream.summary

    @property
    def complete(self) -> bool:
        return bool(self._stream.complete)

    def __iter__(self) -> _SyncStream:
        return self

    def __next__(self) -> Any:
        try:
            return self._facade.call(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None


class AsyncFacade:
    """An AsyncTokenStore driven from sync test code: each call runs on the facade's own
    event loop (in its own thread), so every behavioural test runs against both stores.

    Credentials it hands out refresh from the calling thread through that loop: the way an
    asyncio service's googleapiclient calls (in a worker thread) refresh them.
    """

    def __init__(self, conninfo: Any, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="facade-loop", daemon=True
        )
        self._thread.start()
        self.store: AsyncTokenStore = self.call(_build(conninfo, options))

    def call(self, awaitable: Awaitable[T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(timeout)

    def get_credentials(self, user_id: Any, **kwargs: Any) -> Any:
        return self.call(self.store.get_credentials(user_id, **kwargs))

    def refresh(self, user_id: Any, **kwargs: Any) -> Any:
        return self.call(self.store.refresh(user_id, **kwargs))

    def check(self, user_id: Any) -> Any:
        return self.call(self.store.check(user_id))

    def check_all(self) -> Any:
        return self.call(self.store.check_all())

    def refresh_all(self, **kwargs: Any) -> Any:
        return self.call(self.store.refresh_all(**kwargs))

    def save(self, user_id: Any, credentials: Any, **kwargs: Any) -> None:
        self.call(self.store.save(user_id, credentials, **kwargs))

    def create_table(self) -> bool:
        return self.call(self.store.create_table())

    def iter_statuses(self, **kwargs: Any) -> Any:
        """The async stream, iterated from sync code one status at a time."""
        return _SyncStream(self, self.store.iter_statuses(**kwargs))

    def record_revocation(self, **kwargs: Any) -> Any:
        return self.call(self.store.record_revocation(**kwargs))

    def reseal_all(self, target: Any, **kwargs: Any) -> Any:
        return self.call(self.store.reseal_all(target, **kwargs), timeout=300)

    @property
    def sealing_key_id(self) -> str | None:
        return self.store.sealing_key_id

    def invalidate(self, user_id: Any) -> None:
        self.store.invalidate(user_id)

    def token_uri_problem(self, token_uri: str) -> str | None:
        return self.store.token_uri_problem(token_uri)

    @property
    def refresh_margin(self) -> float:
        return self.store.refresh_margin

    def close(self) -> None:
        self.call(self.store.aclose())

    def shutdown(self) -> None:
        """Close the store and end the facade's event loop (the fixture's teardown)."""
        try:
            self.close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    def __repr__(self) -> str:
        return repr(self.store)

    def __getattr__(self, name: str) -> Any:
        """The store's own attributes (tests look at `_cache` and the like)."""
        return getattr(self.store, name)


def run_scenario(*command: str, timeout: float) -> Any:
    """Run a tests/scenario_*.py script (under a wrapper like faketime or unshare, if any);
    fail the test if it fails; return the JSON of its last line of output."""
    result = subprocess.run(
        [*command], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def idle_connections(store: Any) -> list[Any]:
    """The idle connections in a store's own pool (a TokenStore or an AsyncFacade)."""
    pool: Any = (
        store.store._io.resources._pool
        if isinstance(store, AsyncFacade)
        else store._io.resources._opened.pool
    )
    return [conn for conn, _returned in pool._book._idle]


async def _build(conninfo: Any, options: dict[str, Any]) -> AsyncTokenStore:
    if callable(conninfo):  # a factory of an AsyncConnectionPool, opened on this loop
        conninfo = await conninfo()
    return AsyncTokenStore(conninfo, **options)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Cli:
    """Runs the console script with the DSN (password included) in its environment."""

    def __init__(self, dsn: str) -> None:
        assert SCRIPT is not None, "the gmail-token-store script is not installed in this venv"
        self.dsn = dsn
        self.outputs: list[str] = []
        #: More of the environment for the next runs (e.g. the keyring).
        self.extra_env: dict[str, str] = {}
        self.secrets: set[str] = {CLIENT_SECRET, DSN_PASSWORD}
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:  # the throwaway servers' own, in their DSNs
            self.secrets.add(str(password))

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GOOGLE_CLIENT_SECRET")
        }
        env["GMAIL_TOKEN_STORE_DSN"] = self.dsn
        env["GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI"] = "1"  # the fake Google
        env.update(self.extra_env)
        return env

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert SCRIPT is not None
        result = subprocess.run(
            [SCRIPT, *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def leaked(self, endpoint: FakeTokenEndpoint) -> list[str]:
        secrets = set(self.secrets)
        for request in endpoint.requests:
            secrets |= {t for t in (request.issued_access_token, request.refresh_token) if t}
        text = "\n".join(self.outputs)
        return sorted(secret for secret in secrets if secret in text)


class FakeGmailApi:
    """An API that accepts only tokens the fake endpoint issued: the seed's look revoked."""

    def __init__(self, endpoint: FakeTokenEndpoint) -> None:
        self.endpoint = endpoint
        self.seen: list[str] = []
        self.sent: list[bytes] = []
        self.also_accepted: set[str] = set()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(b'{"emailAddress": "test@gmail.com"}')

            def do_POST(self) -> None:  # users.messages.send
                length = int(self.headers.get("Content-Length") or 0)
                api.sent.append(self.rfile.read(length))
                self._answer(b'{"id": "msg-1", "threadId": "thread-1", "labelIds": ["SENT"]}')

            def _answer(self, body: bytes) -> None:
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                api.seen.append(token)
                issued = {r.issued_access_token for r in api.endpoint.requests} | api.also_accepted
                status = 200 if token in issued else 401
                body = body if status == 200 else b'{"error": {"code": 401}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.url = self.root + "gmail/v1/users/me/profile"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def one_line(text: str) -> str:
    """The one line an expected failure prints on stderr (asserting there is exactly one)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def authorize(client_secrets: Any, user_id: str, *options: str) -> list[str]:
    """The arguments of `authorize --no-browser` for one user."""
    return [
        "authorize",
        "--client-secrets",
        str(client_secrets),
        "--user-id",
        user_id,
        "--no-browser",
        *options,
    ]


def query_of(url: str) -> dict[str, str]:
    """A URL's query parameters (the last value of a repeated one), as a route reads them."""
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def leaked(text: str, secrets: set[str]) -> list[str]:
    """The secrets that appear in `text` (a page, a URL, a log, a traceback)."""
    return sorted(secret for secret in secrets if secret and secret in text)
