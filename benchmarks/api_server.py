"""The API server under load, side by side: requests/s and p50/p99 latency of check and refresh.

One throwaway PostgreSQL, 1,000 users with valid tokens (an hour left, their token_uri the
fake endpoint), and three servers, each uvicorn with one worker in its own process
(`access_log=False`, `lifespan="on"`, no Server header, as `gmail-token-store serve`):

* the library: `create_app(AsyncTokenStore(dsn, allow_loopback_token_uri=True),
  api_keys=...)` (the default cache, 60 s), with one extra route mounted for this benchmark
  only: `GET /bench/constant/{user_id}`, tried first, answers a constant, pre-encoded JSON
  body the size of a check answer (the same middleware, no work: the limit of the stack);
* the library with `cache_ttl=0` (what `--cache-ttl 0` serves): every answer reads the row;
* an auth-server-like FastAPI app: the same routes, the same Bearer check (a SHA-256 digest
  compared in constant time, as a FastAPI dependency), the row read per request through
  psycopg's AsyncConnectionPool (10 connections, as the store's), the same JSON; no lock, no
  refresh (auth-server's "valid" path).

Load: wrk (`apt-get install -y wrk`) with `--latency`, `-c 1/16/64`, `-t min(c, 2)`, a few
seconds per run over kept-alive connections; its Lua script sends the method and the
`Authorization` header and rotates the path over the 1,000 users; the Lua `done()` hook
prints the requests, the duration and the p50/p99 latency wrk measured. Without wrk a Python
load generator runs instead, with a warning: it needs about as much CPU per request as the
servers, so its numbers are not comparable with wrk's (or with the targets).

The caches are warmed first (one pass over all users on each route, the answers checked),
then each side runs once unmeasured. Every round runs each (side, concurrency) pair once in a
shuffled order; the tables show medians over the rounds, ratios of the median requests/s
against the constant route and against the auth-server-like app at the same concurrency.
The cached rows measure the cache's answers: the library's server is restarted and warmed
again before a run its 60 s cache would expire in (the cost of the read each user's entry
takes once a minute is what the `cache_ttl=0` rows show).

uvicorn parses HTTP with httptools when it is installed (`uvicorn[standard]`), else with h11
(the `web` extra installs plain uvicorn: h11); the first line printed says which ran, and
`--http httptools` measures the other (about three times the constant route's requests/s
on the development machine). The listening socket is made with IPPROTO_TCP so that asyncio
sets TCP_NODELAY on each connection (see `serve`).

The machine has 2 cores: wrk takes one, the server (and PostgreSQL, for the sides that read
rows) the other, shared with whatever else runs. Run: `make bench` or
`.venv/bin/python benchmarks/api_server.py [--rounds N] [--duration S] [--clients 1,16,64]
[--http auto|h11|httptools]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import http.client
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gmail_token_store import AsyncTokenStore
from gmail_token_store.testing import FakeTokenEndpoint
from gmail_token_store.web import ApiKeys, create_app

from _common import database, insert_rows, median, print_table, verdict

USERS = 1000
API_KEY = "bench-api-key-" + "k" * 32
CACHE_TTL = 60.0  # the store's default, which the library's server keeps
# The columns the store reads, as anyone would select them: psycopg decodes the JSONB.
SELECT_ROW = (
    "SELECT id, user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry,"
    " updated_at FROM gmail_token WHERE user_id = %s"
)
#: A check answer's shape and size (about 270 bytes), encoded once.
CONSTANT_BODY = json.dumps(
    {
        "status": "found",
        "user_id": "dddddddd-dddd-dddd-dddd-dddddddddddd",
        "email": "user123@gmail.com",
        "has_token": True,
        "has_access_token": True,
        "has_refresh_token": True,
        "has_oauth_config": True,
        "is_expired": False,
        "remaining_seconds": 3456,
        "needs_refresh": False,
    },
    separators=(",", ":"),
).encode()


# --- the servers (each in its own process) ----------------------------------------------


async def constant(_request: Request) -> Response:
    return Response(CONSTANT_BODY, media_type="application/json")


def library_app(dsn: str, cache_ttl: float) -> Any:
    store = AsyncTokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=cache_ttl)
    app = create_app(store, api_keys=ApiKeys.parse(f"bench={API_KEY}"), close_store=True)
    # First: matched by the first route the router tries, the least routing there is.
    app.router.routes.insert(0, Route("/bench/constant/{user_id}", constant, methods=["GET"]))
    return app


def auth_server_like_app(dsn: str) -> Any:
    """auth-server's two routes in FastAPI, reading the row per request (its valid path)."""
    pool = AsyncConnectionPool(dsn, max_size=10, kwargs={"autocommit": True}, open=False)
    digest = hashlib.sha256(API_KEY.encode()).digest()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    async def api_key(authorization: Annotated[str | None, Header()] = None) -> None:
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), digest):
            raise HTTPException(401, "a valid API key is required")

    async def read_row(user_id: uuid.UUID) -> tuple[Any, ...]:
        async with pool.connection() as conn:
            row = await (await conn.execute(SELECT_ROW, (user_id,))).fetchone()
        if row is None:
            raise HTTPException(404, "not found")
        return row

    def remaining(expiry: datetime) -> int:
        return int((expiry - datetime.now(UTC).replace(tzinfo=None)).total_seconds())

    @app.get("/api/gmail/check/{user_id}", dependencies=[Depends(api_key)])
    async def check(user_id: uuid.UUID) -> dict[str, Any]:
        row = await read_row(user_id)
        token_data, oauth_config, metadata, expiry = row[3], row[4], row[6], row[7]
        seconds = remaining(expiry)
        return {
            "status": "found",
            "user_id": str(user_id),
            "email": metadata.get("email"),
            "has_token": True,
            "has_access_token": bool(token_data.get("access_token")),
            "has_refresh_token": bool(token_data.get("refresh_token")),
            "has_oauth_config": bool(oauth_config),
            "is_expired": seconds <= 0,
            "remaining_seconds": max(seconds, 0),
            "needs_refresh": seconds < 300,
        }

    @app.post("/api/gmail/refresh/{user_id}", dependencies=[Depends(api_key)])
    async def refresh(user_id: uuid.UUID) -> dict[str, Any]:
        row = await read_row(user_id)
        return {
            "status": "valid",
            "user_id": str(user_id),
            "email": row[6].get("email"),
            "expires_in": remaining(row[7]),
            "access_token": row[3]["access_token"],
        }

    return app


def serve(kind: str, dsn: str, http: str, ports: Any) -> None:
    """Run one server on a free loopback port (sent to `ports`) until killed."""
    app = auth_server_like_app(dsn) if kind == "auth" else library_app(dsn, SERVERS[kind])
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets of that protocol; a
    # socket made as uvicorn's bind_socket makes it would hold each body back (Nagle)
    # behind the client's delayed ACK of the headers: 40 ms a request on a kept-alive
    # connection.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        http=http,
        access_log=False,
        lifespan="on",
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    ports.put(sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


#: Server kinds: the library's with its cache TTL, and the auth-server-like app.
SERVERS: dict[str, float] = {"cached": CACHE_TTL, "uncached": 0.0, "auth": 0.0}


class Server:
    """One server process; `restart()` for a fresh one (an empty cache)."""

    def __init__(self, kind: str, dsn: str, http: str) -> None:
        self.kind, self.dsn, self.http = kind, dsn, http
        self._context = multiprocessing.get_context("spawn")
        self.port = 0
        self._process: Any = None
        self.restart()

    def restart(self) -> None:
        self.stop()
        ports = self._context.Queue()
        self._process = self._context.Process(
            target=serve, args=(self.kind, self.dsn, self.http, ports)
        )
        self._process.start()
        self.port = ports.get(timeout=60)
        deadline = time.monotonic() + 60
        while True:  # the port refuses until the lifespan has started
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or not self._process.is_alive():
                    raise RuntimeError(f"the {self.kind} server did not start") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        pid: int = self._process.pid
        return pid

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=10)
            self._process = None


# --- the sides and the load ----------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    name: str
    server: str  # a key of SERVERS
    method: str
    prefix: str  # the path, the user id appended
    operation: str  # "check", "refresh" or "constant"


CHECK_PATH, REFRESH_PATH = "/api/gmail/check/", "/api/gmail/refresh/"
CONSTANT = Side("constant route (same app)", "cached", "GET", "/bench/constant/", "constant")
CHECK = Side("library check, cache on", "cached", "GET", CHECK_PATH, "check")
REFRESH = Side("library refresh, cache on", "cached", "POST", REFRESH_PATH, "refresh")
SIDES = [
    CONSTANT,
    CHECK,
    REFRESH,
    Side("library check, cache_ttl=0", "uncached", "GET", CHECK_PATH, "check"),
    Side("library refresh, cache_ttl=0", "uncached", "POST", REFRESH_PATH, "refresh"),
    Side("auth-server-like check (FastAPI)", "auth", "GET", CHECK_PATH, "check"),
    Side("auth-server-like refresh (FastAPI)", "auth", "POST", REFRESH_PATH, "refresh"),
]
AUTH_LIKE = {"check": SIDES[5], "refresh": SIDES[6]}


@dataclass(frozen=True)
class Run:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


LUA = """
local users = {%(users)s}
local method, prefix = "%(method)s", "%(prefix)s"
local threads = 0
function setup(thread)
  thread:set("thread_number", threads)
  threads = threads + 1
end
function init(args)
  requests, index = {}, (thread_number or 0) * 499
  local body = nil
  if method == "POST" then body = "" end
  for i, user in ipairs(users) do
    local headers = {["Authorization"] = "Bearer %(key)s"}
    requests[i] = wrk.format(method, prefix .. user, headers, body)
  end
end
function request()
  index = index %% #requests + 1
  return requests[index]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %%.0f %%.0f %%.0f %%.0f %%.0f\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def raw_request(side: Side, user: str) -> bytes:
    body = "Content-Length: 0\r\n" if side.method == "POST" else ""
    return (
        f"{side.method} {side.prefix}{user} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {API_KEY}\r\n{body}\r\n"
    ).encode()


class Load:
    """Runs of wrk (or, without it, the Python load generator) against one side."""

    def __init__(self, users: Sequence[str], folder: Path, duration: float) -> None:
        self.users, self.folder, self.duration = users, folder, duration
        self.wrk = shutil.which("wrk")

    def script(self, side: Side) -> Path:
        path = self.folder / f"{side.method}{side.prefix.replace('/', '_')}.lua"
        if not path.exists():
            users = ",".join(f'"{user}"' for user in self.users)
            values = {"users": users, "method": side.method, "prefix": side.prefix}
            path.write_text(LUA % {**values, "key": API_KEY})
        return path

    def run(self, side: Side, port: int, clients: int, duration: float | None = None) -> Run:
        seconds = self.duration if duration is None else duration
        if self.wrk is None:
            requests = [raw_request(side, user) for user in self.users]
            return asyncio.run(python_load(port, requests, clients, seconds))
        command = [self.wrk, "--latency", "-t", str(min(clients, 2)), "-c", str(clients)]
        command += ["-d", f"{seconds:g}s", "--timeout", "5s", "-s", str(self.script(side))]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
        [line] = [line for line in output.splitlines() if line.startswith("BENCH ")]
        count, micros, p50, p99, errors = (float(value) for value in line.split()[1:])
        return Run(count / (micros / 1e6), p50 / 1000, p99 / 1000, int(errors))


async def python_load(port: int, requests: Sequence[bytes], clients: int, seconds: float) -> Run:
    """The fallback: `clients` kept-alive connections, each sending the next request when
    the answer has come (as wrk does); far slower per request than wrk."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(number: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = number * 499
        while time.perf_counter() < stop:
            index = (index + 1) % len(requests)
            began = time.perf_counter()
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            errors += not head.startswith(b"HTTP/1.1 2")
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(number) for number in range(clients)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000

    return Run(len(latencies) / elapsed, at(0.50), at(0.99), errors)


def warm(port: int, side: Side, users: Sequence[str]) -> dict[str, Any]:
    """One pass over all users on one connection, each answer checked; the last answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    answer: dict[str, Any] = {}
    for user in users:
        conn.request(
            side.method, side.prefix + user, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{side.name}: {response.status} {answer}")
    conn.close()
    return answer


# --- the benchmark ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--clients", default="1,16,64", help="concurrencies, comma-separated")
    parser.add_argument(
        "--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn's"
    )
    args = parser.parse_args()
    print(stack(args.http))
    concurrencies = [int(value) for value in args.clients.split(",")]

    with (
        database() as postgres,
        FakeTokenEndpoint() as endpoint,
        tempfile.TemporaryDirectory() as folder,
    ):
        users = insert_rows(postgres.dsn, USERS, expires_in=3600, token_uri=endpoint.token_uri)
        load = Load(users, Path(folder), args.duration)
        if load.wrk is None:
            print(
                "WARNING: wrk not found (apt-get install -y wrk): a Python load generator runs"
                " instead; its numbers are NOT comparable with wrk's or with the targets."
            )
        servers = {kind: Server(kind, postgres.dsn, args.http) for kind in SERVERS}
        try:
            runs = measure(servers, load, users, concurrencies, args.rounds)
        finally:
            for server in servers.values():
                server.stop()
    report(runs, concurrencies, args, with_wrk=load.wrk is not None)


def stack(http: str) -> str:
    """The versions and implementations measured (uvicorn's "auto" picks what is installed)."""
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    wrk = shutil.which("wrk")
    tool = "no wrk"
    if wrk:  # "wrk debian/4.1.0-3+b2 [epoll] ...", exit status 1
        tool = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
        tool = " ".join(tool.split()[:2])
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("uvicorn", "starlette", "fastapi", "psycopg")
    )
    return f"{versions}; uvicorn http={http}, loop={loop}; {tool}; {os.cpu_count()} CPUs"


def measure(
    servers: dict[str, Server],
    load: Load,
    users: Sequence[str],
    concurrencies: Sequence[int],
    rounds: int,
) -> dict[tuple[str, int], list[Run]]:
    warmed_at = warm_all(servers, users)
    top = max(concurrencies)
    for side in SIDES:  # unmeasured: pools grown, prepared statements, code paths run
        load.run(side, servers[side.server].port, top, duration=1.0)
    runs: dict[tuple[str, int], list[Run]] = {}
    for _ in range(rounds):
        pairs = [(side, clients) for side in SIDES for clients in concurrencies]
        random.shuffle(pairs)
        for side, clients in pairs:
            # Every cached answer from the cache: no entry may expire during the run.
            expires = time.monotonic() + load.duration + 2 > warmed_at + CACHE_TTL
            if side in (CHECK, REFRESH) and expires:
                servers["cached"].restart()
                warmed_at = warm_all({"cached": servers["cached"]}, users)
                load.run(side, servers["cached"].port, top, duration=1.0)
            runs.setdefault((side.name, clients), []).append(
                load.run(side, servers[side.server].port, clients)
            )
    return runs


def warm_all(servers: dict[str, Server], users: Sequence[str]) -> float:
    """Warm each server's routes over all users (answers checked); when the warming began."""
    began = time.monotonic()
    answers: dict[str, dict[str, Any]] = {}
    # Refresh first: handing Credentials out drops the user's checked row from the cache.
    for side in sorted(SIDES, key=lambda side: side.operation != "refresh"):
        if side.server in servers and side is not CONSTANT:
            answers[side.name] = warm(servers[side.server].port, side, users)
    shapes = {side.operation: set(answers[side.name]) for side in SIDES if side.name in answers}
    for side in SIDES:
        if side.name in answers and set(answers[side.name]) != shapes[side.operation]:
            raise RuntimeError(f"{side.name} answers another shape: {answers[side.name]}")
    return began


def report(
    runs: dict[tuple[str, int], list[Run]],
    concurrencies: Sequence[int],
    args: Any,
    *,
    with_wrk: bool,
) -> None:
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    for (name, clients), measured in runs.items():
        results[(name, clients)] = (
            median([run.requests_per_second for run in measured]),
            median([run.p50_ms for run in measured]),
            median([run.p99_ms for run in measured]),
        )
    for clients in concurrencies:
        floor = results[(CONSTANT.name, clients)][0]
        rows = []
        for side in SIDES:
            rps, p50, p99 = results[(side.name, clients)]
            versus = AUTH_LIKE.get(side.operation)
            x_auth = f"{rps / results[(versus.name, clients)][0]:.2f}" if versus else "-"
            rows.append(
                [side.name, f"{rps:.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{rps / floor:.3f}", x_auth]
            )
        tool = f"wrk -t {min(clients, 2)} -c {clients}" if with_wrk else "Python load generator"
        print_table(
            f"{clients} concurrent keep-alive clients ({tool}, {args.duration:g} s per run):"
            f" medians of {args.rounds} interleaved rounds",
            ["side", "req/s", "p50 ms", "p99 ms", "x constant", "x auth-server-like"],
            rows,
        )
    errors = sum(run.errors for measured in runs.values() for run in measured)
    if errors:
        print(f"\nWARNING: {errors} requests failed (socket errors, timeouts or non-2xx)")
    print(
        "\nTargets (the library with its cache)"
        + ("" if with_wrk else ": NOT comparable, measured without wrk")
    )

    def target(label: str, text: str, value: str, met: str) -> None:
        print(f"  {label + ':':<26}{text:<20}{value:<8}{met}")

    for side in (CHECK, REFRESH):
        versus = AUTH_LIKE[side.operation]
        for clients in concurrencies:
            rps = results[(side.name, clients)][0]
            floor = rps / results[(CONSTANT.name, clients)][0]
            auth = rps / results[(versus.name, clients)][0]
            label = f"{side.operation} at {clients} clients"
            target(label, ">= 0.7 x constant", f"{floor:.3f}", verdict(floor, 0.7, at_least=True))
            target(label, ">= 3 x auth-like", f"{auth:.2f}", verdict(auth, 3.0, at_least=True))
        if 64 in concurrencies:
            p99 = results[(side.name, 64)][2]
            target(f"{side.operation} at 64 clients", "p99 < 20 ms", f"{p99:.2f}", verdict(p99, 20))
    if 64 in concurrencies:
        rps, _, p99 = results[(CONSTANT.name, 64)]
        print(
            f"  (the constant route at 64 clients: p99 {p99:.2f} ms; with 64 requests always in"
            f" flight the mean latency is 64 / req/s = {64 / rps * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()
