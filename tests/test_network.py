"""Bounded by the network too: keepalives, partitions where packets vanish, lock waits."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gmail_token_store import RefreshFailedError, TokenEvent, TokenStore
from gmail_token_store._io.conninfo import TCP_DEFAULTS, conninfo_from
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow
from helpers import idle_connections, run_scenario

SCENARIO = Path(__file__).parent / "scenario_partition.py"


def test_connections_get_tcp_keepalives_and_a_user_timeout_unless_the_dsn_says_otherwise() -> None:
    merged = psycopg.conninfo.conninfo_to_dict(conninfo_from("postgresql://u@db/x").dsn)
    assert {key: merged[key] for key in TCP_DEFAULTS} == TCP_DEFAULTS
    own = conninfo_from("postgresql://u@db/x?keepalives_idle=30&tcp_user_timeout=0").dsn
    mine = psycopg.conninfo.conninfo_to_dict(own)
    assert (mine["keepalives_idle"], mine["tcp_user_timeout"]) == ("30", "0")
    multi = conninfo_from("host=a,b port=5432,5433 target_session_attrs=read-write").dsn
    assert psycopg.conninfo.conninfo_to_dict(multi)["host"] == "a,b"


def test_a_pooled_connection_carries_the_tcp_settings(store: TokenStore, seed: SeedRow) -> None:
    row = seed()
    store.get_credentials(row.user_id)
    [conn] = idle_connections(store)
    parameters = conn.info.get_parameters()
    assert {key: parameters.get(key) for key in TCP_DEFAULTS} == TCP_DEFAULTS


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_partition_is_noticed_in_seconds_and_the_grant_is_kept(kind: str) -> None:
    assert os.geteuid() == 0 and shutil.which("iptables"), (
        "this test drops packets with iptables in a private network namespace: run it as "
        "root with Debian's iptables installed (make test installs it)"
    )
    report: dict[str, Any] = run_scenario(
        "unshare", "-n", sys.executable, str(SCENARIO), kind, timeout=180
    )
    # The refresher's write-back is cut by tcp_user_timeout (10 s), its late save by
    # connect_timeout (2 s); the caller gets the new token, and the grant is kept...
    assert report["refresh_served_new_token"] is True
    assert 9 < report["refresh_seconds"] < 16
    # ... and written once the server has freed the vanished session's row lock.
    assert report["after_heal"] is True
    assert report["grant_saved_after"] is not None and report["grant_saved_after"] < 25
    # A read whose connection vanished: a retryable error in seconds, not minutes.
    assert report["read_outcome"] == "DatabaseUnavailableError"
    assert report["read_seconds"] < 16
    assert report["half_open_connects"] == 0
    assert report["read_after_heal"] is True


def _hold_row_lock(dsn: str, user_id: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn)
    conn.execute("SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE", (user_id,))
    return conn


def test_a_caller_with_a_valid_token_waits_at_most_until_little_is_left_then_gets_it(
    dsn: str,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    events: list[TokenEvent] = []
    store = make_store(lock_timeout=30, on_event=events.append)
    row = seed(expires_in=9)  # mandatory window; 4 s above the 5 s safety margin
    began = time.monotonic()
    with _hold_row_lock(dsn, row.user_id):  # a refresher elsewhere that never finishes
        credentials = store.get_credentials(row.user_id)
    waited = time.monotonic() - began
    assert credentials.token == row.access_token
    assert 2.5 < waited < 6  # about 9 - 5 s, not the 30 s lock_timeout
    assert [event.kind for event in events] == ["lock_timeout", "served_stale"]
    assert endpoint.requests == []


def test_a_caller_with_an_expired_token_waits_lock_timeout_then_gets_a_retryable_error(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(lock_timeout=1.5)
    row = seed(expires_in=-1)
    began = time.monotonic()
    with _hold_row_lock(dsn, row.user_id), pytest.raises(RefreshFailedError) as caught:
        store.get_credentials(row.user_id)
    assert caught.value.retryable and 1.3 < time.monotonic() - began < 4
