"""pytest fixtures for the tests of a service that uses gmail_token_store.

Enable them in the service's conftest.py::

    pytest_plugins = ["gmail_token_store.testing.fixtures"]

* `gmail_token_postgres`: a throwaway PostgreSQL, one per test session (the machine needs
  the PostgreSQL server binaries: Debian's `postgresql` package);
* `gmail_token_dsn`: its DSN (with the server's random password), with a fresh, empty
  `gmail_token` table for each test;
* `fake_token_endpoint`: Google's token endpoint, faked over real HTTP on loopback;
* `make_grant(expires_in=..., scopes=..., email=..., ...)`: inserts a user's grant (its
  refresh goes to the fake endpoint) and returns the user id;
* `token_store` / `async_token_store`: a TokenStore / AsyncTokenStore on that table,
  closed after the test (no cache, so each call reads the row).

gmail_token_store's own test suite uses these same fixtures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from .. import AsyncTokenStore, TokenStore, create_table
from ._endpoint import FakeTokenEndpoint
from ._grants import insert_grant
from ._servers import PostgresServer, throwaway_postgresql

__all__ = [
    "async_token_store",
    "fake_token_endpoint",
    "gmail_token_dsn",
    "gmail_token_postgres",
    "make_grant",
    "token_store",
]


@pytest.fixture(scope="session")
def gmail_token_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL for the whole test session."""
    with throwaway_postgresql() as server:
        yield server


@pytest.fixture
def gmail_token_dsn(gmail_token_postgres: PostgresServer) -> str:
    """The session's database with a fresh, empty gmail_token table (production schema)."""
    with psycopg.connect(gmail_token_postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gmail_token")
    create_table(gmail_token_postgres.dsn)
    return gmail_token_postgres.dsn


@pytest.fixture
def fake_token_endpoint() -> Iterator[FakeTokenEndpoint]:
    """Google's token endpoint on loopback; script it (`.script()`, `.revoke()`, ...)."""
    with FakeTokenEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
def make_grant(gmail_token_dsn: str, fake_token_endpoint: FakeTokenEndpoint) -> Callable[..., str]:
    """`make_grant(expires_in=3600, scopes=[GMAIL_SEND], email=..., user_id=..., **columns)`
    inserts a grant whose refreshes go to `fake_token_endpoint`; returns the user id."""

    def make(**options: Any) -> str:
        grant = insert_grant(gmail_token_dsn, token_uri=fake_token_endpoint.token_uri, **options)
        return grant.user_id

    return make


@pytest.fixture
def token_store(gmail_token_dsn: str) -> Iterator[TokenStore]:
    """A TokenStore on the test's table (cache off), closed after the test."""
    with TokenStore(gmail_token_dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        yield store


@pytest.fixture
def async_token_store(gmail_token_dsn: str) -> Iterator[AsyncTokenStore]:
    """An AsyncTokenStore on the test's table (cache off), for the test's event loop.

    It opens its connections on first use, in whatever loop the test runs; after the test
    they are closed.
    """
    store = AsyncTokenStore(gmail_token_dsn, allow_loopback_token_uri=True, cache_ttl=0)
    yield store
    asyncio.run(store.aclose())
