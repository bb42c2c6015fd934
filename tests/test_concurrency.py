"""Herds of real threads and real processes on one token: exactly one token request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gmail_token_store import TokenStore
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow
from helpers import call_together, herd, run_herd


def test_threads_of_one_process_share_one_refresh(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.3
    store = make_store()
    row = seed(expires_in=-5)
    tokens = call_together(12, lambda: store.get_credentials(row.user_id).token)

    [request] = endpoint.refresh_requests()
    assert tokens == [request.issued_access_token] * 12


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_herd_of_24_callers_in_6_processes_on_an_expiring_token_makes_one_request(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, kind: str
) -> None:
    endpoint.latency = 0.2  # the lock is held long enough for everybody to pile up
    row = seed(expires_in=20)  # inside the mandatory window: everybody must wait
    outcomes = run_herd(
        dsn,
        row.user_id,
        **herd(kind, 6, 4),
        store_options={"cache_ttl": 0, "lock_timeout": 30},
    )
    [request] = endpoint.refresh_requests()
    assert [token for token, _ in outcomes] == [request.issued_access_token] * 24


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_herd_inside_the_refresh_window_does_not_wait_for_the_refresh(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, kind: str
) -> None:
    endpoint.latency = 1.5  # a slow token endpoint
    row = seed(expires_in=120)  # advisory window: 2 minutes left
    outcomes = run_herd(
        dsn,
        row.user_id,
        **herd(kind, 4, 4),
        store_options={"cache_ttl": 0, "lock_timeout": 30},
    )
    [request] = endpoint.refresh_requests()
    tokens = [token for token, _ in outcomes]
    # Only the caller that refreshed waited for the endpoint and got the new token; the
    # 15 others were answered with the still-valid one instead of queueing on the lock.
    assert request.issued_access_token is not None
    assert tokens.count(request.issued_access_token) == 1
    assert tokens.count(row.access_token) == 15
