"""Behind PgBouncer in transaction pooling, and across a PostgreSQL restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from gmail_token_store import DatabaseUnavailableError, TokenStore
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    PgBouncerServer,
    PostgresServer,
    throwaway_pgbouncer,
)

from conftest import SeedRow
from helpers import StatementCounter, herd, run_herd


@pytest.fixture(scope="module")
def pgbouncer(postgres: PostgresServer) -> Iterator[PgBouncerServer]:
    with throwaway_pgbouncer(
        postgres.port, pool_mode="transaction", password=postgres.password
    ) as bouncer:
        yield bouncer


@pytest.fixture
def bouncer_dsn(dsn: str, pgbouncer: PgBouncerServer) -> str:
    return pgbouncer.dsn


def test_hot_reads_past_the_prepare_threshold_work_through_pgbouncer(
    bouncer_dsn: str,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    store = make_store(conninfo=bouncer_dsn, prepare_threshold=None, max_connections=4)
    rows = [seed(expires_in=3000) for _ in range(3)]
    for _ in range(12):  # well past psycopg's default threshold of 5
        for row in rows:
            assert store.get_credentials(row.user_id).token == row.access_token
    due = seed(expires_in=0)
    for _ in range(3):
        assert store.refresh(due.user_id, force=True).status == "refreshed"
    assert store.check(due.user_id).state == "ok"
    assert len(endpoint.refresh_requests()) == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_herd_of_4_processes_through_pgbouncer_makes_one_request(
    bouncer_dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, kind: str
) -> None:
    endpoint.latency = 0.2
    row = seed(expires_in=10)
    outcomes = run_herd(
        bouncer_dsn,
        row.user_id,
        **herd(kind, 4, 3),
        store_options={"cache_ttl": 0, "prepare_threshold": None, "lock_timeout": 30},
    )
    [request] = endpoint.refresh_requests()
    assert [token for token, _ in outcomes] == [request.issued_access_token] * 12


def test_refresh_path_sets_nothing_session_scoped(
    traced_store: tuple[TokenStore, StatementCounter], seed: SeedRow
) -> None:
    store, counter = traced_store
    row = seed(expires_in=0)
    counter.reset()
    store.get_credentials(row.user_id)
    sent = " ".join(counter.sent()).upper()
    assert "FOR NO KEY UPDATE" in sent
    assert "SET_CONFIG('LOCK_TIMEOUT', '5000MS', TRUE)" in sent  # transaction-local
    for session_scoped in ("SET SESSION", " SET LOCK", "LISTEN", "PG_ADVISORY_LOCK", "PREPARE "):
        assert session_scoped not in sent


def test_next_call_after_a_postgresql_restart_succeeds(
    postgres: PostgresServer,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    store = make_store(max_connections=3)
    fresh = seed(expires_in=3000)
    due = seed(expires_in=0)
    assert store.get_credentials(fresh.user_id).token == fresh.access_token
    assert store.check(due.user_id).state == "expired"

    postgres.restart()  # every pooled connection is now dead

    assert store.get_credentials(fresh.user_id).token == fresh.access_token
    postgres.restart()
    assert store.get_credentials(due.user_id).valid  # the refresh path retries too
    assert len(endpoint.refresh_requests()) == 1


def test_first_call_once_postgresql_accepts_again_succeeds_whatever_the_outage(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(connect_timeout=1)
    row = seed(expires_in=3000)
    assert store.get_credentials(row.user_id).token == row.access_token
    postgres.stop_serving()
    try:
        for _ in range(3):  # the outage outlasts connect_timeout, several times over
            with pytest.raises(DatabaseUnavailableError) as caught:
                store.get_credentials(row.user_id)
            assert caught.value.retryable
            time.sleep(0.5)
    finally:
        postgres.start_serving()  # returns once the server accepts connections
    # No reconnect backoff stands between the server accepting and the next call.
    assert store.get_credentials(row.user_id).token == row.access_token
