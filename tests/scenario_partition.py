"""Network partitions in which packets really vanish, run by tests/test_network.py.

Runs inside a private network namespace (`unshare -n`, as root), so the iptables rules it
adds touch nothing else: its own PostgreSQL and fake token endpoint on the namespace's
loopback, a store, and DROP rules on the database's port in both directions. Prints one
JSON object of outcomes and timings.

    unshare -n python tests/scenario_partition.py sync|async
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from gmail_token_store import AsyncTokenStore, TokenStore, TokenStoreError, create_table
from gmail_token_store.testing import FakeTokenEndpoint, throwaway_postgresql

T = TypeVar("T")


def iptables(action: str, port: int) -> None:
    for direction in ("--dport", "--sport"):
        subprocess.run(
            ["iptables", action, "INPUT", "-p", "tcp", direction, str(port), "-j", "DROP"],
            check=True,
        )


def half_open(port: int) -> int:
    listing = subprocess.run(
        ["ss", "-Htan", "state", "syn-sent", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(listing.splitlines())


def seed(dsn: str, endpoint: FakeTokenEndpoint, expires_in: int) -> str:
    user_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO gmail_token (user_id, token_data, oauth_config, metadata, expiry)"
            " VALUES (%s, %s, %s, %s, now() AT TIME ZONE 'UTC' + make_interval(secs => %s))",
            (
                user_id,
                Jsonb({"access_token": "ya29.seed-" + user_id, "refresh_token": "1//r-" + user_id}),
                Jsonb(
                    {"client_id": "cid", "client_secret": "secret", "token_uri": endpoint.token_uri}
                ),
                Jsonb({"email": "p@gmail.com"}),
                expires_in,
            ),
        )
    return user_id


def timed(call: Callable[[], T]) -> tuple[float, T | str]:
    began = time.monotonic()
    try:
        outcome: T | str = call()
    except TokenStoreError as exc:
        outcome = type(exc).__name__
    return time.monotonic() - began, outcome


def _returned(value: Any) -> Any:
    """The sync store's calls return their values: nothing to run."""
    return value


def main() -> None:
    kind = sys.argv[1]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report: dict[str, Any] = {}
    with throwaway_postgresql() as postgres, FakeTokenEndpoint() as endpoint:
        endpoint.rotate_refresh_tokens = True
        endpoint.revoke_rotated = True
        create_table(postgres.dsn)
        due, fresh = seed(postgres.dsn, endpoint, -10), seed(postgres.dsn, endpoint, 3000)
        options: dict[str, Any] = {"cache_ttl": 0, "connect_timeout": 2, "http_timeout": 2.0}
        call: Callable[[Any], Any]
        if kind == "sync":
            store: Any = TokenStore(postgres.dsn, allow_loopback_token_uri=True, **options)
            call = _returned
        else:
            loop = asyncio.new_event_loop()
            store = AsyncTokenStore(postgres.dsn, allow_loopback_token_uri=True, **options)
            call = loop.run_until_complete
        port = postgres.port

        def token(user_id: str) -> str:
            return str(call(store.get_credentials(user_id)).token)

        token(fresh)  # a pooled connection, in use before the partition
        # 1. The refresher's connection vanishes after the answer: the write-back waits
        #    for TCP (tcp_user_timeout), the late save for connect_timeout.
        endpoint.on_request = lambda _token: iptables("-A", port)
        report["refresh_seconds"], report["refresh_outcome"] = timed(lambda: token(due))
        endpoint.on_request = None
        issued = endpoint.refresh_requests()[-1]
        report["refresh_served_new_token"] = report["refresh_outcome"] == issued.issued_access_token
        iptables("-D", port)
        healed = time.monotonic()
        # The database answers again: calls write the kept grant as soon as the row is
        # free; the vanished session holds its lock until the server's idle-in-transaction
        # timeout (3 x http_timeout + 15 s after the lock) ends it.
        report["after_heal"] = token(fresh) == "ya29.seed-" + fresh
        report["grant_saved_after"] = None
        while time.monotonic() - healed < 40:
            with psycopg.connect(postgres.dsn) as conn:
                row = conn.execute(
                    "SELECT token_data->>'refresh_token' FROM gmail_token WHERE user_id = %s",
                    (due,),
                ).fetchone()
            if row is not None and row[0] == issued.issued_refresh_token:
                report["grant_saved_after"] = time.monotonic() - healed
                break
            time.sleep(0.2)
            token(fresh)

        # 2. A pooled connection whose peer vanishes while a read is in flight.
        iptables("-A", port)
        report["read_seconds"], report["read_outcome"] = timed(lambda: token(fresh))
        # A connection attempt that timed out is closed, not left retrying its SYN.
        report["half_open_connects"] = half_open(port)
        iptables("-D", port)
        report["read_after_heal"] = token(fresh) == "ya29.seed-" + fresh
        if kind == "sync":
            store.close()
        else:
            call(store.aclose())
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
