"""The in-process cache: served while young and outside the margin, bounded, invalidated."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND, InsufficientScopesError, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import GMAIL_READONLY, SeedRow, utcnow


def replace_token_behind_the_store(dsn: str, user_id: str, token: str) -> None:
    """What another writer (auth-server, another replica) would do."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET token_data = token_data || %s WHERE user_id = %s",
            (Jsonb({"access_token": token}), user_id),
        )


def test_cached_credentials_are_served_without_reading_the_row(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(cache_ttl=60)
    row = seed(expires_in=3000)
    first = store.get_credentials(row.user_id)
    replace_token_behind_the_store(dsn, row.user_id, "ya29.elsewhere-" + "e" * 16)
    assert store.get_credentials(row.user_id) is first
    assert store.get_credentials(row.user_id.upper()) is first

    store.invalidate(row.user_id)
    assert store.get_credentials(row.user_id).token == "ya29.elsewhere-" + "e" * 16


def test_cache_entries_expire_after_cache_ttl(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(cache_ttl=0.3)
    row = seed(expires_in=3000)
    store.get_credentials(row.user_id)
    replace_token_behind_the_store(dsn, row.user_id, "ya29.later-" + "l" * 16)
    time.sleep(0.4)
    assert store.get_credentials(row.user_id).token == "ya29.later-" + "l" * 16


def test_cache_never_serves_a_token_that_entered_the_refresh_margin(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    store = make_store(cache_ttl=60, refresh_margin=300)
    row = seed(expires_in=301)  # one second outside the margin
    assert store.get_credentials(row.user_id).token == row.access_token
    time.sleep(1.2)
    credentials = store.get_credentials(row.user_id)
    [request] = endpoint.refresh_requests()
    assert credentials.token == request.issued_access_token


def test_cache_ttl_zero_reads_the_row_every_time(
    dsn: str, store: TokenStore, seed: SeedRow
) -> None:
    row = seed(expires_in=3000)
    store.get_credentials(row.user_id)
    replace_token_behind_the_store(dsn, row.user_id, "ya29.now-" + "n" * 16)
    assert store.get_credentials(row.user_id).token == "ya29.now-" + "n" * 16


def test_refresh_and_save_update_the_cache(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    store = make_store(cache_ttl=60)
    row = seed(expires_in=3000)
    store.get_credentials(row.user_id)
    refreshed = store.refresh(row.user_id, force=True)
    assert store.get_credentials(row.user_id).token == refreshed.access_token

    saved = Credentials(
        "ya29.saved-" + "s" * 16,
        refresh_token="1//saved",
        token_uri=endpoint.token_uri,
        expiry=utcnow().replace(year=utcnow().year + 1),
    )
    store.save(row.user_id, saved)
    assert store.get_credentials(row.user_id).token == saved.token


def test_cached_hit_still_checks_scopes(
    make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(cache_ttl=60)
    row = seed(scopes=(GMAIL_READONLY,))
    store.get_credentials(row.user_id, scopes=[GMAIL_READONLY])
    with pytest.raises(InsufficientScopesError):
        store.get_credentials(row.user_id, scopes=[GMAIL_SEND])


def test_cache_is_bounded_and_keeps_what_is_being_used(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(cache_ttl=60, cache_size=20)
    hot = seed(expires_in=3000)
    hot_credentials = store.get_credentials(hot.user_id)
    rows = [seed(expires_in=3000) for _ in range(100)]
    for row in rows:
        store.get_credentials(row.user_id)
        assert store.get_credentials(hot.user_id) is hot_credentials  # a hit each time
    assert store._cache is not None and len(store._cache) <= 20
    # The hot user survived a hundred cold ones; the first cold ones were evicted.
    replace_token_behind_the_store(dsn, rows[0].user_id, "ya29.evicted-" + "v" * 16)
    assert store.get_credentials(rows[0].user_id).token == "ya29.evicted-" + "v" * 16


def test_cache_under_concurrent_hits_misses_and_invalidations(
    make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    store = make_store(cache_ttl=60, cache_size=8, max_connections=4)
    rows = [seed(expires_in=3000) for _ in range(16)]
    expected = {row.user_id: row.access_token for row in rows}
    errors: list[BaseException] = []
    stop = time.monotonic() + 1.5

    def hammer(offset: int) -> None:
        try:
            index = offset
            while time.monotonic() < stop:
                row = rows[index % len(rows)]
                assert store.get_credentials(row.user_id).token == expected[row.user_id]
                if index % 7 == 0:
                    store.invalidate(row.user_id)
                index += 3
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert store._cache is not None and len(store._cache) <= 8
