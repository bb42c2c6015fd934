"""A rotated refresh token is never lost while the process lives.

The endpoint here rotates refresh tokens and revokes the one each rotation replaced, so a
grant whose write-back is lost is dead for good. The write-back fails because the database
stops for longer than connect_timeout, an interrupt lands between the answer and the write,
the session times out, or the row keeps its JSON as text; in every case the grant is kept
and written (compare-and-set on the row version) as soon as the database answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from gmail_token_store import TokenEvent, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint, FaultProxy, PostgresServer

from conftest import SeedRow
from helpers import wait_until

FetchRow = Callable[[str], dict[str, Any]]


@pytest.fixture
def rotating(endpoint: FakeTokenEndpoint) -> FakeTokenEndpoint:
    endpoint.rotate_refresh_tokens = True
    endpoint.revoke_rotated = True
    return endpoint


def _assert_row_holds_the_grant_a_fresh_store_can_use(
    dsn: str, user_id: str, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    newest = endpoint.refresh_requests()[-1]
    stored = fetch_row(user_id)["token_data"]
    assert stored["refresh_token"] == newest.issued_refresh_token
    with TokenStore(
        dsn, allow_loopback_token_uri=True, cache_ttl=0
    ) as fresh_store:  # another process, later
        assert fresh_store.refresh(user_id, force=True).status == "refreshed"
    assert endpoint.refresh_requests()[-1].reply.value == "ok"


@pytest.fixture
def stopped_postgres(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, started again after the test whatever happened."""
    yield postgres
    if not _accepts(postgres):
        postgres.start_serving()


def _accepts(postgres: PostgresServer) -> bool:
    try:
        psycopg.connect(postgres.dsn, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def test_grant_survives_the_database_stopping_longer_than_connect_timeout(
    dsn: str,
    stopped_postgres: PostgresServer,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    rotating: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    events: list[TokenEvent] = []
    store = make_store(connect_timeout=1, on_event=events.append)
    row, other = seed(expires_in=-10), seed(expires_in=3000)
    # The database stops after the row is locked and before the answer arrives.
    rotating.on_request = lambda _token: stopped_postgres.stop_serving()

    credentials = store.get_credentials(row.user_id)

    rotating.on_request = None
    [request] = rotating.refresh_requests()
    assert credentials.token == request.issued_access_token  # served, unsaved
    assert "grant_kept" in [event.kind for event in events]
    time.sleep(1.5)  # down for longer than connect_timeout
    stopped_postgres.start_serving()

    # The next call that reaches the database, for any user, writes the kept grant.
    assert store.get_credentials(other.user_id).token == other.access_token
    assert fetch_row(row.user_id)["token_data"]["refresh_token"] == request.issued_refresh_token
    assert "grant_restored" in [event.kind for event in events]
    _assert_row_holds_the_grant_a_fresh_store_can_use(dsn, row.user_id, rotating, fetch_row)


def test_a_kept_grant_is_refreshed_with_its_own_refresh_token_not_the_rows(
    stopped_postgres: PostgresServer,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    rotating: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    store = make_store(connect_timeout=1)
    row = seed(expires_in=-10)
    rotating.expires_in = 30  # the kept token is due again at once (refresh margin 300 s)
    rotating.on_request = lambda _token: stopped_postgres.stop_serving()
    store.get_credentials(row.user_id)
    rotating.on_request = None
    stopped_postgres.start_serving()

    credentials = store.get_credentials(row.user_id)  # writes the kept grant, then refreshes

    first, second = rotating.refresh_requests()
    assert second.refresh_token == first.issued_refresh_token != row.refresh_token
    assert second.reply.value == "ok" and credentials.token == second.issued_access_token
    assert fetch_row(row.user_id)["token_data"]["refresh_token"] == second.issued_refresh_token


def test_grant_survives_an_interrupt_between_the_answer_and_the_write(
    dsn: str,
    postgres: PostgresServer,
    seed: SeedRow,
    rotating: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    row = seed(expires_in=-10)
    with (
        FaultProxy(postgres.port) as proxy,
        TokenStore(proxy.dsn(dsn), allow_loopback_token_uri=True, cache_ttl=0) as store,
    ):
        store.check(row.user_id)  # a pooled connection through the proxy

        def interrupt_during_the_write(_token: str | None) -> None:
            proxy.delay(2.0)  # the write-back will hang in the network...

            def strike() -> None:
                time.sleep(0.5)  # ...when the interrupt arrives, then the network heals
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                proxy.heal()

            threading.Thread(target=strike).start()

        rotating.on_request = interrupt_during_the_write
        follower_got: list[str | None] = []
        follower = threading.Thread(
            target=lambda: follower_got.append(_token_after(store, row.user_id, 0.2))
        )
        follower.start()
        with pytest.raises(KeyboardInterrupt):
            store.get_credentials(row.user_id)  # the main thread leads the refresh
        rotating.on_request = None
        follower.join(timeout=30)
    [request] = rotating.refresh_requests()
    # The interrupt reached only its own thread, once the grant was secured.
    assert follower_got == [request.issued_access_token]
    assert fetch_row(row.user_id)["token_data"]["refresh_token"] == request.issued_refresh_token
    _assert_row_holds_the_grant_a_fresh_store_can_use(dsn, row.user_id, rotating, fetch_row)


def _token_after(store: TokenStore, user_id: str, delay: float) -> str | None:
    time.sleep(delay)  # the main thread is refreshing by now: this one waits for it
    return store.get_credentials(user_id).token


def test_grant_survives_a_write_back_cut_by_the_sessions_idle_timeout(
    dsn: str,
    postgres: PostgresServer,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    rotating: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    row = seed(expires_in=-10)
    with FaultProxy(postgres.port) as proxy:
        store = make_store(conninfo=proxy.dsn(dsn), http_timeout=0.1)
        # The server ends a transaction idle for 3 x http_timeout + 15 s (SQLSTATE 25P03):
        # hold the write-back in the network for longer than that.
        rotating.on_request = lambda _token: proxy.delay(16.0)
        threading.Timer(16.5, proxy.heal).start()
        credentials = store.get_credentials(row.user_id)
        rotating.on_request = None
    [request] = rotating.refresh_requests()
    assert credentials.token == request.issued_access_token
    _assert_row_holds_the_grant_a_fresh_store_can_use(dsn, row.user_id, rotating, fetch_row)


def test_grant_in_a_row_with_json_text_survives_a_lost_connection(
    dsn: str,
    store: TokenStore,
    seed: SeedRow,
    rotating: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    # Older writers stored the token as JSON *text* inside the JSONB column.
    row = seed(expires_in=-10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET token_data = to_jsonb(token_data::text) WHERE user_id = %s",
            (row.user_id,),
        )
    assert isinstance(fetch_row(row.user_id)["token_data"], str)
    rotating.latency = 1.0

    def kill_the_refreshers_connection(_token: str | None) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE state = 'idle in transaction' AND query LIKE %s",
                ("%FOR NO KEY UPDATE%",),
            )

    rotating.on_request = kill_the_refreshers_connection
    credentials = store.get_credentials(row.user_id)
    rotating.on_request = None
    [request] = rotating.refresh_requests()
    assert credentials.token == request.issued_access_token
    wait_until(lambda: isinstance(fetch_row(row.user_id)["token_data"], dict))
    _assert_row_holds_the_grant_a_fresh_store_can_use(dsn, row.user_id, rotating, fetch_row)
