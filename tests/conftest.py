"""Fixtures: one real PostgreSQL per session, a fresh gmail_token table per test, and the
fake token endpoint over real HTTP on loopback: the public ones a consuming service gets
from `gmail_token_store.testing.fixtures`, under the short names the suite uses."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from gmail_token_store import GMAIL_SEND, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer, insert_grant

from helpers import CLIENT_SECRET as CLIENT_SECRET  # noqa: PLC0414 - re-exported for the tests
from helpers import AsyncFacade, Cli, FakeGmailApi, StatementCounter

GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
CLIENT_ID = "seed-client-id.apps.googleusercontent.com"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


pytest_plugins = ["gmail_token_store.testing.fixtures"]

# The fake Google listens on loopback: stores built from the environment (the module-level
# get_credentials, the command, the examples) must trust it, as a consumer's test suite
# would set it. Stores built by the tests opt in with allow_loopback_token_uri=True.
os.environ["GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI"] = "1"


@pytest.fixture(scope="session")
def postgres(gmail_token_postgres: PostgresServer) -> PostgresServer:
    return gmail_token_postgres


@pytest.fixture
def dsn(gmail_token_dsn: str) -> str:
    """The session's database with a fresh gmail_token table, created with the seed's DDL."""
    return gmail_token_dsn


@pytest.fixture
def endpoint(fake_token_endpoint: FakeTokenEndpoint) -> FakeTokenEndpoint:
    return fake_token_endpoint


@pytest.fixture(params=["sync", "async"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store a behavioural test runs against: TokenStore, or AsyncTokenStore through
    `helpers.AsyncFacade`. Every test that uses `store` or `make_store` runs for both."""
    kind: str = request.param
    return kind


@pytest.fixture
def make_store(dsn: str, store_kind: str) -> Iterator[Callable[..., TokenStore]]:
    """Build stores of the test's kind on its table (no cache unless asked); all closed
    afterwards. For the async kind the result is an AsyncFacade, typed as a TokenStore:
    it has the same methods, run on its own event loop."""
    stores: list[TokenStore | AsyncFacade] = []

    def make(**options: Any) -> TokenStore:
        options.setdefault("cache_ttl", 0)
        options.setdefault("allow_loopback_token_uri", True)  # the fake Google is on loopback
        options.setdefault("http_timeout", 2.0)
        options.setdefault("lock_timeout", 5.0)
        conninfo = options.pop("conninfo", dsn)
        store = (
            TokenStore(conninfo, **options)
            if store_kind == "sync"
            else AsyncFacade(conninfo, **options)
        )
        stores.append(store)
        return cast(TokenStore, store)

    yield make
    for store in stores:
        store.shutdown() if isinstance(store, AsyncFacade) else store.close()


@pytest.fixture
def store(make_store: Callable[..., TokenStore]) -> TokenStore:
    return make_store()


@pytest.fixture
def traced_store(
    dsn: str, store_kind: str, make_store: Callable[..., TokenStore]
) -> Iterator[tuple[TokenStore, StatementCounter]]:
    """A store on a one-connection psycopg_pool pool (the service's own, as a service may
    pass one in) whose protocol messages are recorded."""
    counter = StatementCounter()
    if store_kind == "sync":
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=1,
            kwargs={"autocommit": True},
            configure=counter.attach,
            open=True,
        )
        try:
            yield make_store(conninfo=pool), counter
        finally:
            pool.close()
            counter.close()
        return
    pools: list[AsyncConnectionPool[Any]] = []

    async def attach(conn: Any) -> None:
        counter.attach(conn)

    async def open_pool() -> AsyncConnectionPool[Any]:
        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, configure=attach, open=False
        )
        await pool.open()
        pools.append(pool)
        return pool

    store = make_store(conninfo=open_pool)
    try:
        yield store, counter
    finally:
        facade = cast(AsyncFacade, store)
        for opened in pools:
            facade.call(opened.close())
        counter.close()


@dataclass
class Seeded:
    user_id: str
    access_token: str
    refresh_token: str


SeedRow = Callable[..., Seeded]


@pytest.fixture
def seed(dsn: str, endpoint: FakeTokenEndpoint) -> SeedRow:
    """Insert one row in the seed's layout; keyword arguments override any column."""

    def insert(
        *,
        expires_in: float | None = 3600,
        email: str | None = "test@gmail.com",
        scopes: Any = (GMAIL_SEND,),
        **columns: Any,
    ) -> Seeded:
        columns.setdefault("robeing_id", "robeing-1")
        columns.setdefault(
            "metadata", Jsonb({"email": email, "source_file": "token.json"} if email else {})
        )
        if expires_in is not None:  # by the test's clock, as the seed rows always were
            columns.setdefault("expiry", utcnow() + timedelta(seconds=expires_in))
        grant = insert_grant(
            dsn,
            token_uri=endpoint.token_uri,
            expires_in=None,
            scopes=scopes,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            **columns,
        )
        return Seeded(grant.user_id, grant.access_token, grant.refresh_token)

    return insert


@pytest.fixture
def fetch_row(dsn: str) -> Callable[[str], dict[str, Any]]:
    """Read one row back as a dict of column -> value."""

    def fetch(user_id: str) -> dict[str, Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cursor = conn.execute("SELECT * FROM gmail_token WHERE user_id = %s", (user_id,))
            row = cursor.fetchone()
            assert row is not None, f"no row for {user_id}"
            assert cursor.description is not None
            return {
                column.name: value for column, value in zip(cursor.description, row, strict=True)
            }

    return fetch


@pytest.fixture
def cli(dsn: str, endpoint: FakeTokenEndpoint) -> Iterator[Cli]:
    """The gmail-token-store command on the test's table; fails the test on a leaked secret."""
    runner = Cli(dsn)
    yield runner
    assert runner.leaked(endpoint) == [], "a secret reached the command's output"


@pytest.fixture
def client_secrets(endpoint: FakeTokenEndpoint, tmp_path: Path) -> Path:
    """A Google client secrets file for an installed app, pointing at the fake endpoint."""
    path = tmp_path / "client_secret.json"
    path.write_text(json.dumps(endpoint.client_config(CLIENT_ID, CLIENT_SECRET)))
    return path


@pytest.fixture
def gmail_api(endpoint: FakeTokenEndpoint) -> Iterator[FakeGmailApi]:
    api = FakeGmailApi(endpoint)
    yield api
    api.close()
