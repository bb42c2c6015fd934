"""Failover to a real streaming standby (pg_basebackup -R, pg_promote()), no grant lost.

The store follows the primary through a libpq multi-host DSN with
target_session_attrs=read-write, the way services configure it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from gmail_token_store import TokenStore, TokenStoreError, create_table
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    InsertedGrant,
    ReplicatedPostgres,
    insert_grant,
    throwaway_replicated_postgresql,
)

from helpers import Cli

#: After the promotion, every call must succeed again within this (seconds).
SETTLES_WITHIN = 3.0


@pytest.fixture
def replicated() -> Iterator[ReplicatedPostgres]:
    with throwaway_replicated_postgresql() as servers:
        create_table(servers.primary.dsn)
        yield servers


@pytest.fixture
def rotating(endpoint: FakeTokenEndpoint) -> FakeTokenEndpoint:
    endpoint.rotate_refresh_tokens = True
    endpoint.revoke_rotated = True
    return endpoint


def _row(dsn: str, user_id: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT token_data->>'access_token', token_data->>'refresh_token', expiry"
            " FROM gmail_token WHERE user_id = %s",
            (user_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def _owners(grants: list[InsertedGrant], endpoint: FakeTokenEndpoint) -> dict[str | None, str]:
    owner: dict[str | None, str] = {grant.access_token: grant.user_id for grant in grants}
    by_refresh: dict[str | None, str] = {grant.refresh_token: grant.user_id for grant in grants}
    for request in endpoint.refresh_requests():  # rotation chains: follow each hand-over
        user = by_refresh.get(request.refresh_token)
        if user is not None and request.issued_access_token:
            owner[request.issued_access_token] = user
            if request.issued_refresh_token:
                by_refresh[request.issued_refresh_token] = user
    return owner


def test_failover_under_load_gives_no_wrong_token_and_settles_in_seconds(
    replicated: ReplicatedPostgres,
    make_store: Callable[..., TokenStore],
    endpoint: FakeTokenEndpoint,
) -> None:
    grants = [
        insert_grant(replicated.primary.dsn, token_uri=endpoint.token_uri, expires_in=lifetime)
        for lifetime in [3600] * 8 + [200, -10]  # two of ten are refreshed under load
    ]
    replicated.wait_for_replay()
    store = make_store(conninfo=replicated.dsn, connect_timeout=2)
    calls: list[tuple[float, str, str | None, str | None]] = []
    stop = threading.Event()

    def caller(offset: int) -> None:
        index = offset
        while not stop.is_set():
            user = grants[index % len(grants)].user_id
            index += 1
            try:
                token, error = store.get_credentials(user).token, None
            except TokenStoreError as exc:
                token, error = None, type(exc).__name__ + (" retryable" if exc.retryable else "")
            except Exception as exc:  # a driver error would be a defect
                token, error = None, f"UNEXPECTED {type(exc).__name__}: {exc}"
            calls.append((time.monotonic(), user, token, error))
            time.sleep(0.005)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    replicated.primary.stop_serving()
    time.sleep(1.0)
    replicated.standby.promote()
    promoted = time.monotonic()
    time.sleep(SETTLES_WITHIN + 2.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    errors = [error for _, _, _, error in calls if error]
    assert all(error.endswith("retryable") for error in errors), set(errors)
    late = [error for at, _, _, error in calls if error and at > promoted + SETTLES_WITHIN]
    assert late == []
    assert [at for at, *_ in calls if at > promoted + SETTLES_WITHIN]  # it kept serving
    owner = _owners(grants, endpoint)
    assert [c for c in calls if c[2] is not None and owner.get(c[2]) != c[1]] == []

    # A grant that falls due now is refreshed and persisted on the new primary.
    due = grants[0]
    with psycopg.connect(replicated.standby.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET expiry = now() AT TIME ZONE 'UTC' WHERE user_id = %s",
            (due.user_id,),
        )
    token = store.get_credentials(due.user_id).token
    assert token == endpoint.refresh_requests()[-1].issued_access_token
    assert _row(replicated.standby.dsn, due.user_id)[0] == token


def test_a_refresh_in_flight_when_the_primary_dies_keeps_its_grant_on_the_new_primary(
    replicated: ReplicatedPostgres,
    make_store: Callable[..., TokenStore],
    rotating: FakeTokenEndpoint,
) -> None:
    grant = insert_grant(replicated.primary.dsn, token_uri=rotating.token_uri, expires_in=-10)
    replicated.wait_for_replay()
    store = make_store(conninfo=replicated.dsn, connect_timeout=2)

    def fail_over(_token: str | None) -> None:  # the answer is on its way back
        replicated.primary.stop_serving()
        replicated.standby.promote()

    rotating.on_request = fail_over
    credentials = store.get_credentials(grant.user_id)
    rotating.on_request = None

    [request] = rotating.refresh_requests()
    assert credentials.token == request.issued_access_token
    _, refresh_token, _ = _row(replicated.standby.dsn, grant.user_id)
    assert refresh_token == request.issued_refresh_token
    with TokenStore(replicated.dsn, allow_loopback_token_uri=True, cache_ttl=0) as fresh_store:
        assert fresh_store.refresh(grant.user_id, force=True).status == "refreshed"


def test_a_write_the_standby_never_received_is_written_again_after_the_failover(
    replicated: ReplicatedPostgres,
    make_store: Callable[..., TokenStore],
    rotating: FakeTokenEndpoint,
) -> None:
    grant = insert_grant(replicated.primary.dsn, token_uri=rotating.token_uri, expires_in=3600)
    replicated.wait_for_replay()
    store = make_store(conninfo=replicated.dsn, connect_timeout=2)
    replicated.standby.stop_serving()  # it will miss the next write

    store.refresh(grant.user_id, force=True)  # commits a rotated refresh token on the primary
    [request] = rotating.refresh_requests()
    replicated.primary.stop_serving()
    replicated.standby.start_serving()
    replicated.standby.promote()
    assert _row(replicated.standby.dsn, grant.user_id)[1] == grant.refresh_token  # lost there

    # The store reads the row, finds it older than what it wrote, and writes it again
    # before anything would refresh with the revoked refresh token.
    credentials = store.get_credentials(grant.user_id)

    assert credentials.token == request.issued_access_token
    assert _row(replicated.standby.dsn, grant.user_id)[:2] == (
        request.issued_access_token,
        request.issued_refresh_token,
    )
    with TokenStore(replicated.dsn, allow_loopback_token_uri=True, cache_ttl=0) as fresh_store:
        assert fresh_store.refresh(grant.user_id, force=True).status == "refreshed"
    assert [r.reply.value for r in rotating.refresh_requests()] == ["ok", "ok"]


def test_a_standby_is_a_retryable_outage_never_an_operators_problem(
    replicated: ReplicatedPostgres,
    make_store: Callable[..., TokenStore],
    endpoint: FakeTokenEndpoint,
) -> None:
    fresh = insert_grant(replicated.primary.dsn, token_uri=endpoint.token_uri)
    due = insert_grant(replicated.primary.dsn, token_uri=endpoint.token_uri, expires_in=-10)
    replicated.wait_for_replay()
    # Pointed at the standby alone (a DSN without target_session_attrs, a demoted primary):
    store = make_store(conninfo=replicated.standby.dsn, connect_timeout=2)
    assert store.get_credentials(fresh.user_id).token == fresh.access_token  # reads work
    with pytest.raises(TokenStoreError) as caught:
        store.get_credentials(due.user_id)  # the row lock needs a writable server (25006)
    assert caught.value.retryable and "read-only" in str(caught.value)
    assert endpoint.requests == []


def test_the_command_follows_the_primary_through_a_multi_host_dsn(
    replicated: ReplicatedPostgres, endpoint: FakeTokenEndpoint
) -> None:
    grant = insert_grant(replicated.primary.dsn, token_uri=endpoint.token_uri, expires_in=-10)
    replicated.wait_for_replay()
    replicated.primary.stop_serving()
    replicated.standby.promote()
    cli = Cli(replicated.dsn)
    cli.secrets |= {grant.access_token, grant.refresh_token}
    listing = cli("list")
    assert listing.returncode == 0 and grant.user_id in listing.stdout
    keepalive = cli("refresh-all")
    assert keepalive.returncode == 0 and "refreshed:             1" in keepalive.stdout
    assert cli.leaked(endpoint) == []
