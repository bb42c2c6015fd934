"""Bad input gets a clear, typed error and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

from gmail_token_store import (
    ConfigurationError,
    InvalidTokenRecordError,
    InvalidUserIdError,
    TokenStore,
    TokenStoreError,
)
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import CLIENT_ID, CLIENT_SECRET, SeedRow

MALFORMED_IDS: list[Any] = [
    None,
    42,
    3.5,
    True,
    b"dddddddd-dddd-dddd-dddd-dddddddddddd",
    "",
    "user-1",
    "dddddddd-dddd-dddd-dddd-ddddddddddd",  # one digit short
    "dddddddd-dddd-dddd-dddd-dddddddddddd' OR '1'='1",
    "'; DROP TABLE gmail_token; --",
    ["dddddddd-dddd-dddd-dddd-dddddddddddd"],
]

FetchRow = Callable[[str], dict[str, Any]]


@pytest.fixture
def unreachable_store(make_store: Callable[..., TokenStore]) -> TokenStore:
    """A store whose database does not exist: any query would raise DatabaseUnavailable."""
    return make_store(conninfo="postgresql://postgres@127.0.0.1:1/test", connect_timeout=0.5)


@pytest.mark.parametrize("bad_id", MALFORMED_IDS, ids=repr)
@pytest.mark.parametrize("method", ["get_credentials", "check", "refresh", "invalidate", "save"])
def test_malformed_user_id_raises_value_error_before_any_query(
    unreachable_store: TokenStore, bad_id: Any, method: str
) -> None:
    call: Callable[..., Any] = getattr(unreachable_store, method)
    args = (bad_id, Credentials("ya29.x")) if method == "save" else (bad_id,)
    with pytest.raises(InvalidUserIdError) as caught:
        call(*args)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TokenStoreError)
    assert "UUID" in str(caught.value)


def test_sql_in_a_user_id_leaves_the_table_alone(
    dsn: str, store: TokenStore, seed: SeedRow
) -> None:
    row = seed()
    with pytest.raises(InvalidUserIdError):
        store.get_credentials("'; DROP TABLE gmail_token; --")
    assert store.get_credentials(row.user_id).token == row.access_token


@pytest.mark.parametrize(
    "form",
    [str.upper, lambda text: text.replace("-", ""), uuid.UUID],
    ids=["upper", "no hyphens", "uuid.UUID"],
)
def test_user_id_in_any_uuid_form_finds_the_row(
    store: TokenStore, seed: SeedRow, form: Callable[[str], Any]
) -> None:
    row = seed()
    assert store.get_credentials(form(row.user_id)).token == row.access_token


BROKEN_ROWS: dict[str, dict[str, Any]] = {
    "token_data text that is not JSON": {"token_data": Jsonb("{not json")},
    "token_data an array": {"token_data": Jsonb(["ya29.a", "1//r"])},
    "token_data without tokens": {"token_data": Jsonb({"token_type": "Bearer"})},
    "access token not a string": {
        "token_data": Jsonb({"access_token": 12345, "refresh_token": "1//r"})
    },
    "oauth_config text that is not JSON": {"oauth_config": Jsonb("client_id=x")},
    "scopes a number": {"scopes": Jsonb(7)},
    "expiry in token_data not a date": {
        "expiry": None,
        "token_data": Jsonb(
            {"access_token": "ya29.a", "refresh_token": "1//r", "expiry": "tomorrow"}
        ),
    },
}


@pytest.mark.parametrize("columns", BROKEN_ROWS.values(), ids=BROKEN_ROWS.keys())
def test_broken_row_raises_invalid_record_and_check_reports_it(
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    columns: dict[str, Any],
) -> None:
    row = seed(expires_in=0, **columns)
    before = fetch_row(row.user_id)
    with pytest.raises(InvalidTokenRecordError) as caught:
        store.get_credentials(row.user_id)
    assert row.user_id in str(caught.value) and caught.value.problem
    status = store.check(row.user_id)  # never raises for a row that exists
    assert status.state == "broken" and status.problem == caught.value.problem
    assert endpoint.requests == []
    assert fetch_row(row.user_id) == before


@pytest.mark.parametrize(
    "token_uri",
    [
        "https://evil.example.com/token",
        "http://oauth2.googleapis.com/token",  # Google's host, but the secret would go in clear
        "https://oauth2.googleapis.com.evil.example.com/token",
        "https://evil.example.com/oauth2.googleapis.com/token",
        "ftp://127.0.0.1/token",
        "https://127.0.0.1:99999/token",
        "//oauth2.googleapis.com/token",
        "not a url",
    ],
)
def test_foreign_token_uri_is_refused_before_any_request(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, token_uri: str
) -> None:
    row = seed(
        expires_in=0,
        oauth_config=Jsonb(
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token_uri": token_uri}
        ),
    )
    with pytest.raises(InvalidTokenRecordError, match="token_uri"):
        store.get_credentials(row.user_id)
    assert store.check(row.user_id).state == "broken"
    assert endpoint.requests == []


@pytest.mark.parametrize(
    "token_uri",
    [
        "https://oauth2.googleapis.com/token",
        "https://accounts.google.com/o/oauth2/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://token.internal.example/token",
        "http://localhost:8080/token",
        "http://[::1]:8080/token",
    ],
)
def test_google_loopback_and_allowed_token_hosts_are_accepted(
    make_store: Callable[..., TokenStore], seed: SeedRow, token_uri: str
) -> None:
    store = make_store(allowed_token_hosts=["token.internal.example"])
    row = seed(
        oauth_config=Jsonb(
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token_uri": token_uri}
        )
    )
    assert store.check(row.user_id).state == "ok"
    assert store.get_credentials(row.user_id).token == row.access_token


@pytest.mark.parametrize(
    "options",
    [
        {"refresh_margin": -1},
        {"refresh_margin": float("nan")},
        {"http_timeout": 0},
        {"http_timeout": "10"},
        {"lock_timeout": -5},
        {"cache_ttl": -1},
        {"cache_size": 0},
        {"max_connections": 0},
        {"mandatory_refresh_margin": 400},
        {"allowed_token_hosts": "evil.example.com"},
        {"prepare_threshold": "5"},
        {"on_event": "print"},
    ],
    ids=",".join,
)
def test_bad_options_raise_value_error_naming_the_value(dsn: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        TokenStore(dsn, **options)


@pytest.mark.parametrize(
    "conninfo",
    ["", "   ", "postgresql://u:pw-in-dsn@h/db?nonsense=1", "host=x password=pw-in-dsn =oops"],
)
def test_unusable_dsn_raises_configuration_error_without_echoing_it(conninfo: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenStore(conninfo)
    assert "pw-in-dsn" not in str(caught.value)
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(
    ("credentials", "kwargs"),
    [
        ("ya29.not-credentials", {}),
        (Credentials(None), {}),
        (Credentials("ya29.x"), {"metadata": ["not", "a", "dict"]}),
    ],
    ids=["not Credentials", "no token at all", "metadata not a dict"],
)
def test_save_rejects_bad_input_and_writes_nothing(
    store: TokenStore, seed: SeedRow, fetch_row: FetchRow, credentials: Any, kwargs: dict[str, Any]
) -> None:
    row = seed()
    before = fetch_row(row.user_id)
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked per case elsewhere
        store.save(row.user_id, credentials, **kwargs)
    assert fetch_row(row.user_id) == before


def test_save_refuses_credentials_with_a_foreign_token_uri(store: TokenStore, dsn: str) -> None:
    user_id = str(uuid.uuid4())
    with pytest.raises(InvalidTokenRecordError, match="token_uri"):
        store.save(
            user_id,
            Credentials("ya29.x", refresh_token="1//r", token_uri="https://evil.example.com/t"),
        )
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM gmail_token").fetchone() == (0,)


def test_scopes_given_as_a_string_is_a_value_error(store: TokenStore, seed: SeedRow) -> None:
    row = seed()
    with pytest.raises(ValueError, match="list"):
        store.get_credentials(row.user_id, scopes="https://www.googleapis.com/auth/gmail.send")


def test_closed_store_refuses_calls(make_store: Callable[..., TokenStore], seed: SeedRow) -> None:
    row = seed()
    store = make_store()
    store.close()
    with pytest.raises(TokenStoreError, match="closed"):
        store.get_credentials(row.user_id)


def test_row_without_an_oauth_client_serves_a_fresh_token_but_cannot_refresh(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    no_client = Jsonb({"token_uri": endpoint.token_uri})
    fresh = seed(expires_in=3000, oauth_config=no_client)
    due = seed(expires_in=0, oauth_config=no_client)
    assert store.get_credentials(fresh.user_id).token == fresh.access_token
    assert store.check(fresh.user_id).state == "broken"  # an operator must add the client
    with pytest.raises(InvalidTokenRecordError, match="OAuth client"):
        store.get_credentials(due.user_id)
    assert endpoint.requests == []
