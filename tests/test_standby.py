"""Hot-path reads from a streaming standby (`read_conninfo`): locks and writes stay on the
primary, a lagging standby never makes the store serve a replaced grant as the row or
write an older grant over a newer one, and a standby that stops answering is skipped.

Tested with `testing`'s replicated pair, replay paused to make the standby lag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from gmail_token_store import TokenStore
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    ReplicatedPostgres,
    insert_grant,
    throwaway_replicated_postgresql,
)


@pytest.fixture
def pair() -> Iterator[ReplicatedPostgres]:
    with throwaway_replicated_postgresql() as servers:
        with TokenStore(servers.primary.dsn) as store:
            store.create_table()
        servers.wait_for_replay()
        yield servers


def primary_row(pair: ReplicatedPostgres, user_id: str) -> tuple[Any, ...]:
    with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT token_data->>'access_token', token_data->>'refresh_token', xmin::text"
            " FROM gmail_token WHERE user_id = %s",
            (user_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_hot_reads_go_to_the_standby_and_see_what_it_has_replayed(
    pair: ReplicatedPostgres, endpoint: FakeTokenEndpoint, make_store: Callable[..., TokenStore]
) -> None:
    grant = insert_grant(pair.primary.dsn, token_uri=endpoint.token_uri, expires_in=3600)
    pair.wait_for_replay()
    store = make_store(conninfo=pair.primary.dsn, read_conninfo=pair.standby.dsn)
    assert store.get_credentials(grant.user_id).token == grant.access_token
    pair.pause_replay()
    try:
        with psycopg.connect(pair.primary.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE gmail_token SET token_data = jsonb_set(token_data, '{access_token}',"
                " '\"ya29.written-on-the-primary\"') WHERE user_id = %s",
                (grant.user_id,),
            )
        # The standby has not replayed it: the read went there.
        assert store.get_credentials(grant.user_id).token == grant.access_token
    finally:
        pair.resume_replay()
    pair.wait_for_replay()
    assert store.get_credentials(grant.user_id).token == "ya29.written-on-the-primary"
    assert endpoint.requests == []


def test_a_row_due_on_a_lagging_standby_is_decided_under_the_primary_lock(
    pair: ReplicatedPostgres, make_store: Callable[..., TokenStore]
) -> None:
    with FakeTokenEndpoint(rotate_refresh_tokens=True, revoke_rotated=True) as rotating:
        grant = insert_grant(pair.primary.dsn, token_uri=rotating.token_uri, expires_in=30)
        pair.wait_for_replay()
        pair.pause_replay()
        try:
            elsewhere = make_store(conninfo=pair.primary.dsn)  # another service, on the primary
            fresh = elsewhere.refresh(grant.user_id, force=True)
            newer = primary_row(pair, grant.user_id)
            assert newer[1] != grant.refresh_token  # rotated: the old one is revoked
            reader = make_store(conninfo=pair.primary.dsn, read_conninfo=pair.standby.dsn)
            # The standby still shows the old, due grant: the store goes to the primary's
            # lock, finds it refreshed, and serves that; it sends nothing.
            served = reader.get_credentials(grant.user_id)
            assert served.token == fresh.access_token
            assert len(rotating.refresh_requests()) == 1
            assert primary_row(pair, grant.user_id) == newer  # nothing written over it
        finally:
            pair.resume_replay()


def test_a_grant_this_store_wrote_is_served_over_what_a_lagging_standby_shows(
    pair: ReplicatedPostgres, make_store: Callable[..., TokenStore]
) -> None:
    with FakeTokenEndpoint(rotate_refresh_tokens=True, revoke_rotated=True) as rotating:
        grant = insert_grant(pair.primary.dsn, token_uri=rotating.token_uri, expires_in=30)
        pair.wait_for_replay()
        store = make_store(conninfo=pair.primary.dsn, read_conninfo=pair.standby.dsn)
        pair.pause_replay()
        try:
            first = store.get_credentials(grant.user_id)  # due: refreshed on the primary
            assert first.token != grant.access_token
            written = primary_row(pair, grant.user_id)
            for _ in range(3):  # the standby still holds the old, due, revoked grant
                assert store.get_credentials(grant.user_id).token == first.token
            assert len(rotating.refresh_requests()) == 1
            assert primary_row(pair, grant.user_id) == written  # nothing older written back
        finally:
            pair.resume_replay()
        pair.wait_for_replay()
        assert store.get_credentials(grant.user_id).token == first.token


def test_a_standby_that_stops_answering_is_skipped(
    pair: ReplicatedPostgres, endpoint: FakeTokenEndpoint, make_store: Callable[..., TokenStore]
) -> None:
    grant = insert_grant(pair.primary.dsn, token_uri=endpoint.token_uri, expires_in=3600)
    pair.wait_for_replay()
    store = make_store(conninfo=pair.primary.dsn, read_conninfo=pair.standby.dsn, connect_timeout=2)
    assert store.get_credentials(grant.user_id).token == grant.access_token
    pair.standby.stop_serving()
    try:
        began = time.monotonic()
        for _ in range(20):
            assert store.get_credentials(grant.user_id).token == grant.access_token
        assert time.monotonic() - began < 10  # one wait for the standby, not one per call
    finally:
        pair.standby.start_serving()


def test_read_conninfo_comes_from_the_environment_and_is_masked(
    pair: ReplicatedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GMAIL_TOKEN_STORE_READ_DSN", pair.standby.dsn)
    with TokenStore.from_env(pair.primary.dsn) as store:
        assert pair.primary.password not in repr(store._settings)  # (the pair's, both)
        assert store._settings.read_conninfo == pair.standby.dsn
