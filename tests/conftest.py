"""Fixtures: one real PostgreSQL per session, a fresh gmail_token table per test, and the
fake token endpoint over real HTTP on loopback."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from gmail_token_store import GMAIL_SEND, TokenStore
from gmail_token_store._sql import CREATE_TABLE
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer, throwaway_postgresql

from helpers import StatementCounter

GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
CLIENT_ID = "seed-client-id.apps.googleusercontent.com"
#: Distinctive secrets, so that a test can search any output for them.
CLIENT_SECRET = "seed-client-secret-" + "S" * 16


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with throwaway_postgresql() as server:
        yield server


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """The session's database with a fresh gmail_token table, created with the seed's DDL."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS gmail_token")
        conn.execute(CREATE_TABLE.text)
    return postgres.dsn


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    with FakeTokenEndpoint() as fake:
        yield fake


@pytest.fixture
def make_store(dsn: str) -> Iterator[Callable[..., TokenStore]]:
    """Build TokenStores on the test's table (no cache unless asked); all closed afterwards."""
    stores: list[TokenStore] = []

    def make(**options: Any) -> TokenStore:
        options.setdefault("cache_ttl", 0)
        options.setdefault("http_timeout", 2.0)
        options.setdefault("lock_timeout", 5.0)
        store = TokenStore(options.pop("conninfo", dsn), **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., TokenStore]) -> TokenStore:
    return make_store()


@pytest.fixture
def traced_store(
    dsn: str, make_store: Callable[..., TokenStore]
) -> Iterator[tuple[TokenStore, StatementCounter]]:
    """A store on a one-connection pool of ours whose protocol messages are recorded."""
    counter = StatementCounter()
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
        user_id = str(columns.pop("user_id", uuid.uuid4()))
        access_token = "ya29.seed-access-" + secrets.token_hex(12)
        refresh_token = "1//seed-refresh-" + secrets.token_hex(12)
        values: dict[str, Any] = {
            "user_id": user_id,
            "robeing_id": "robeing-1",
            "token_data": Jsonb(
                {
                    "access_token": access_token,
                    "refresh_token": refresh_token,
                    "token_type": "Bearer",
                }
            ),
            "oauth_config": Jsonb(
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_uri": endpoint.token_uri,
                }
            ),
            "scopes": Jsonb(list(scopes)) if isinstance(scopes, tuple) else scopes,
            "metadata": Jsonb({"email": email, "source_file": "token.json"} if email else {}),
            "expiry": utcnow() + timedelta(seconds=expires_in) if expires_in is not None else None,
        }
        values.update(columns)
        names = ", ".join(values)
        placeholders = ", ".join(f"%({name})s" for name in values)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"INSERT INTO gmail_token ({names}) VALUES ({placeholders})", values)
        return Seeded(user_id, access_token, refresh_token)

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
