"""Credentials handed out keep working when a consuming library refreshes them."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import psycopg
import pytest
from google.auth.credentials import TokenState

from gmail_token_store import TokenStore
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow, utcnow
from helpers import FakeGmailApi

FetchRow = Callable[[str], dict[str, Any]]


def test_authorized_session_401_refreshes_through_the_store_and_persists(
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    gmail_api: FakeGmailApi,
    fetch_row: FetchRow,
) -> None:
    row = seed(expires_in=3000)  # valid by its expiry, yet the API rejects it
    credentials = store.get_credentials(row.user_id)
    with google.auth.transport.requests.AuthorizedSession(credentials) as session:
        response = session.get(gmail_api.url, timeout=10)
    assert response.status_code == 200
    [request] = endpoint.refresh_requests()
    assert gmail_api.seen == [row.access_token, request.issued_access_token]
    assert fetch_row(row.user_id)["token_data"]["access_token"] == request.issued_access_token
    assert credentials.token == request.issued_access_token


def test_refresh_adopts_a_newer_token_already_in_the_row_without_a_request(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)
    mine = make_store().get_credentials(row.user_id)
    newer = make_store().refresh(row.user_id, force=True)  # another replica refreshed
    assert len(endpoint.refresh_requests()) == 1

    mine.refresh(google.auth.transport.requests.Request())

    assert mine.token == newer.access_token and mine.expiry == newer.expiry
    assert len(endpoint.refresh_requests()) == 1


def test_expired_credentials_are_refreshed_by_the_session_before_the_call(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, gmail_api: FakeGmailApi
) -> None:
    row = seed(expires_in=3000)
    credentials = store.get_credentials(row.user_id)
    assert credentials.expiry is not None
    credentials.expiry = credentials.expiry.replace(year=2000)  # as if held for hours
    with google.auth.transport.requests.AuthorizedSession(credentials) as session:
        response = session.get(gmail_api.url, timeout=10)
    # The session saw an expired token and asked for another; the row held that same
    # token, so the store refreshed (a different valid token would have been adopted).
    assert response.status_code == 200
    assert len(endpoint.refresh_requests()) == 1


def test_copies_stay_bound_to_the_store_and_pickles_are_detached(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)
    credentials = store.get_credentials(row.user_id)
    copy = credentials.with_quota_project("my-project")
    copy.refresh(google.auth.transport.requests.Request())
    assert copy.token != row.access_token and len(endpoint.refresh_requests()) == 1

    restored = pickle.loads(pickle.dumps(credentials))  # noqa: S301 - our own object
    assert restored.token == credentials.token and restored.refresh_token is None
    with pytest.raises(google.auth.exceptions.RefreshError, match="detached"):
        restored.refresh(google.auth.transport.requests.Request())


def test_store_failures_reach_the_consumer_as_refresh_errors(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)
    credentials = store.get_credentials(row.user_id)
    endpoint.revoke(row.refresh_token)
    with pytest.raises(google.auth.exceptions.RefreshError, match="re-authorize") as caught:
        credentials.refresh(google.auth.transport.requests.Request())
    assert type(caught.value.__cause__).__name__ == "ReauthRequiredError"


def test_token_in_the_refresh_window_is_used_by_the_session_without_a_refresh(
    dsn: str, store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, gmail_api: FakeGmailApi
) -> None:
    row = seed(expires_in=120)  # google-auth alone would call it expired (3 min 45 s rule)
    gmail_api.also_accepted.add(row.access_token)
    with psycopg.connect(dsn) as other_refresher:
        other_refresher.execute(
            "SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE", (row.user_id,)
        )
        credentials = store.get_credentials(row.user_id)  # the still-valid token, at once
        assert credentials.valid and credentials.token_state is TokenState.STALE
        with google.auth.transport.requests.AuthorizedSession(credentials) as session:
            assert session.get(gmail_api.url, timeout=10).status_code == 200
    assert gmail_api.seen == [row.access_token]
    assert endpoint.requests == []  # neither the store nor the session queued for a refresh


@pytest.mark.parametrize(
    ("seconds_left", "expired", "state"),
    [
        (30, True, TokenState.INVALID),
        (120, False, TokenState.STALE),
        (1000, False, TokenState.FRESH),
    ],
)
def test_expiry_follows_the_stores_windows_not_google_auths(
    store: TokenStore, seed: SeedRow, seconds_left: int, expired: bool, state: TokenState
) -> None:
    credentials = store.get_credentials(seed(expires_in=3000).user_id)
    credentials.expiry = utcnow() + timedelta(seconds=seconds_left)
    assert credentials.expired is expired  # mandatory window: 60 s; google-auth's: 225 s
    assert credentials.token_state is state  # stale inside the 300 s refresh margin
