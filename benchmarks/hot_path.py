"""Hot path per call, side by side: bare SELECT, get_credentials (no cache, cache), HTTP hop.

* bare SELECT: the row by user_id on one open autocommit connection (the floor: one round
  trip), psycopg's defaults (prepared after 5 executions, like the store's pool);
* the store's own statement (its columns as text and the database's clock), prepared, on
  one open connection with a reused cursor: the miss path's floor, so that the ratio to it
  is the Python the store adds per miss (pool, parse, decisions, Credentials);
* get_credentials with cache_ttl=0: pool checkout, the same SELECT, parsing, Credentials;
* get_credentials with the default cache (60 s);
* the HTTP hop it replaces: a small local service in its own process (like auth-server)
  that runs the same SELECT and answers JSON over a kept-alive HTTP/1.1 connection with
  TCP_NODELAY on both ends; the client is http.client, the leanest there is, so the hop
  is measured at its cheapest.

Rounds are interleaved in a shuffled order, so machine noise hits every side alike; the
table shows the median of the per-round means. Run: `make bench` or
`.venv/bin/python benchmarks/hot_path.py [--rounds N] [--calls N]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from gmail_token_store import TokenStore
from gmail_token_store._io.sql import READ_ROW
from gmail_token_store.testing import FakeTokenEndpoint

from _common import database, insert_rows, median, print_table, verdict

# The columns the store reads, as anyone would select them: psycopg decodes the JSONB.
SELECT_ROW = (
    "SELECT id, user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry,"
    " updated_at FROM gmail_token WHERE user_id = %s"
)


def serve_like_auth_server(dsn: str, ports: Any) -> None:
    """A minimal auth-server: GET /api/gmail/refresh/<user_id> -> the row's token as JSON."""
    conn = psycopg.connect(dsn, autocommit=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real client pool would use
        disable_nagle_algorithm = True  # TCP_NODELAY, as real servers set

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            user_id = self.path.rsplit("/", 1)[-1]
            row = conn.execute(SELECT_ROW, (user_id,)).fetchone()
            assert row is not None
            body = json.dumps(
                {
                    "status": "valid",
                    "user_id": user_id,
                    "email": row[6].get("email"),
                    "expires_in": 3000,
                    "access_token": row[3]["access_token"],
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ports.put(server.server_address[1])
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=1000, help="calls per side per round")
    args = parser.parse_args()

    with database() as postgres, FakeTokenEndpoint() as endpoint:
        [user_id] = insert_rows(postgres.dsn, 1, expires_in=86_400, token_uri=endpoint.token_uri)
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        service = context.Process(target=serve_like_auth_server, args=(postgres.dsn, ports))
        service.start()
        try:
            http_conn = http.client.HTTPConnection("127.0.0.1", ports.get(timeout=30))
            bare = psycopg.connect(postgres.dsn, autocommit=True)
            uncached = TokenStore(postgres.dsn, allow_loopback_token_uri=True, cache_ttl=0)
            cached = TokenStore(postgres.dsn, allow_loopback_token_uri=True)

            def bare_select() -> None:
                bare.execute(SELECT_ROW, (user_id,)).fetchone()

            # The floor of the miss path: the store's own statement (its columns as text,
            # the database's clock), prepared, on one open connection with a reused cursor.
            own = psycopg.connect(postgres.dsn, autocommit=True, prepare_threshold=0)
            own_cursor = own.cursor()
            own_params = {"user_id": user_id}

            def own_statement() -> None:
                own_cursor.execute(READ_ROW.text, own_params, prepare=True).fetchone()

            def http_hop() -> None:
                http_conn.request("GET", f"/api/gmail/refresh/{user_id}")
                response = http_conn.getresponse()
                json.loads(response.read())

            def no_cache() -> None:
                uncached.get_credentials(user_id)

            def with_cache() -> None:
                cached.get_credentials(user_id)

            sides: dict[str, Callable[[], None]] = {
                "bare SELECT on one open connection": bare_select,
                "the store's statement, one connection, reused cursor": own_statement,
                "get_credentials, cache_ttl=0": no_cache,
                "get_credentials, default cache": with_cache,
                "HTTP hop to an auth-server-like service": http_hop,
            }
            per_round: dict[str, list[float]] = {name: [] for name in sides}
            for round_number in range(args.rounds + 1):
                order = list(sides)
                random.shuffle(order)
                for name in order:
                    call = sides[name]
                    began = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    seconds = (time.perf_counter() - began) / args.calls
                    if round_number:  # round 0 warms up prepared statements and caches
                        per_round[name].append(seconds * 1e6)
            uncached.close()
            cached.close()
            bare.close()
            own.close()
            http_conn.close()
        finally:
            service.kill()
            service.join(timeout=10)

    us = {name: median(values) for name, values in per_round.items()}
    floor = us["bare SELECT on one open connection"]
    hop = us["HTTP hop to an auth-server-like service"]
    print_table(
        f"Hot path, one user: microseconds per call, median of {args.rounds} interleaved rounds"
        f" of {args.calls} calls",
        ["side", "us/call", "x bare SELECT", "x HTTP hop"],
        [
            [name, f"{value:.1f}", f"{value / floor:.3f}", f"{value / hop:.3f}"]
            for name, value in us.items()
        ],
    )
    own_floor = us["the store's statement, one connection, reused cursor"]
    own_ratio = us["get_credentials, cache_ttl=0"] / own_floor
    python_us = us["get_credentials, cache_ttl=0"] - own_floor
    uncached_ratio = us["get_credentials, cache_ttl=0"] / floor
    cached_ratio = us["get_credentials, default cache"] / floor
    hop_ratio = us["get_credentials, cache_ttl=0"] / hop
    print("\nTargets")
    print(
        f"  cache_ttl=0 <= 1.3 x the store's statement: {own_ratio:.3f}  {verdict(own_ratio, 1.3)}"
        f"  ({python_us:.1f} us of Python per miss on top of the round trip; target 12)"
    )
    print(
        f"  cache_ttl=0 <= 1.5 x bare SELECT:  {uncached_ratio:.3f}  {verdict(uncached_ratio, 1.5)}"
    )
    print(f"  cached      <= 0.05 x bare SELECT: {cached_ratio:.4f}  {verdict(cached_ratio, 0.05)}")
    print(f"  cache_ttl=0 <= 0.5 x HTTP hop:     {hop_ratio:.3f}  {verdict(hop_ratio, 0.5)}")


if __name__ == "__main__":
    main()
