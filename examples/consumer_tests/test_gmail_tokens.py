"""A consuming service's tests, on a throwaway PostgreSQL and the fake token endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gmail_token_store import GMAIL_SEND, AsyncTokenStore, ReauthRequiredError, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint, Reply


def test_a_token_about_to_expire_is_refreshed_once(
    token_store: TokenStore,
    make_grant: Callable[..., str],
    fake_token_endpoint: FakeTokenEndpoint,
) -> None:
    user_id = make_grant(expires_in=60, scopes=[GMAIL_SEND], email="ada@example.com")

    credentials = token_store.get_credentials(user_id, scopes=[GMAIL_SEND])

    assert credentials.valid
    [request] = fake_token_endpoint.refresh_requests()
    assert credentials.token == request.issued_access_token


def test_a_revoked_grant_asks_the_user_to_consent_again(
    token_store: TokenStore,
    make_grant: Callable[..., str],
    fake_token_endpoint: FakeTokenEndpoint,
) -> None:
    user_id = make_grant(expires_in=-10)
    fake_token_endpoint.default = Reply.INVALID_GRANT

    with pytest.raises(ReauthRequiredError):
        token_store.get_credentials(user_id)


def test_the_async_store_serves_a_fresh_token(
    async_token_store: AsyncTokenStore, make_grant: Callable[..., str]
) -> None:
    user_id = make_grant(expires_in=3600)

    credentials = asyncio.run(async_token_store.get_credentials(user_id))

    assert credentials.valid
