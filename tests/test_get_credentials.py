"""get_credentials / refresh / check / save against the real table and the fake endpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

import gmail_token_store
from gmail_token_store import (
    GMAIL_SEND,
    ConfigurationError,
    InsufficientScopesError,
    TokenNotFoundError,
    TokenStore,
)
from gmail_token_store._core.record import FAILURE_KEY
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import CLIENT_ID, CLIENT_SECRET, GMAIL_READONLY, SeedRow, utcnow
from helpers import (
    AUTH_SERVER_CHECK_KEYS,
    AUTH_SERVER_REFRESH_KEYS,
    StatementCounter,
    call_together,
)

FetchRow = Callable[[str], dict[str, Any]]


def test_fresh_token_is_served_from_the_row_without_a_token_request(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)
    credentials = store.get_credentials(row.user_id)
    assert credentials.token == row.access_token
    assert endpoint.requests == []


@pytest.mark.parametrize("expires_in", [299, 120, 30, -600, None], ids=str)
def test_token_due_within_the_margin_is_refreshed_and_persisted(
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    expires_in: float | None,
) -> None:
    row = seed(expires_in=expires_in)
    before = fetch_row(row.user_id)

    credentials = store.get_credentials(row.user_id)

    [request] = endpoint.refresh_requests()
    assert request.refresh_token == row.refresh_token
    assert request.client_id == CLIENT_ID
    assert credentials.token == request.issued_access_token != row.access_token
    after = fetch_row(row.user_id)
    assert after["token_data"]["access_token"] == credentials.token
    assert after["token_data"]["refresh_token"] == row.refresh_token
    assert after["expiry"] == credentials.expiry
    assert after["expiry"] > utcnow() + timedelta(seconds=store.refresh_margin)
    assert after["updated_at"] > before["updated_at"]


def test_credentials_are_google_credentials_with_expiry_scopes_and_no_secrets(
    store: TokenStore, seed: SeedRow
) -> None:
    row = seed(expires_in=3000, scopes=(GMAIL_SEND, GMAIL_READONLY))
    credentials = store.get_credentials(row.user_id)
    assert isinstance(credentials, Credentials)
    assert credentials.valid
    assert credentials.expiry is not None and credentials.expiry.tzinfo is None  # naive UTC
    assert abs((credentials.expiry - utcnow()).total_seconds() - 3000) < 60
    assert credentials.scopes == [GMAIL_SEND, GMAIL_READONLY]
    # Whoever holds the credentials cannot refresh behind the store's back, or leak these.
    assert credentials.refresh_token is None
    assert credentials.client_secret is None


def test_every_other_column_and_key_is_left_as_it_was(
    dsn: str, store: TokenStore, seed: SeedRow, fetch_row: FetchRow
) -> None:
    row = seed(expires_in=10, is_equipped=True, equipped_to="robeing-7", robeing_id="rb-42")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET token_data = token_data || %s, metadata = metadata || %s"
            " WHERE user_id = %s",
            (Jsonb({"id_token": "keep-me"}), Jsonb({"nickname": "t"}), row.user_id),
        )
    before = fetch_row(row.user_id)

    store.get_credentials(row.user_id)

    after = fetch_row(row.user_id)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"token_data", "expiry", "updated_at"}
    assert {k: v for k, v in after["token_data"].items() if k != "access_token"} == {
        k: v for k, v in before["token_data"].items() if k != "access_token"
    }


def test_rotated_refresh_token_and_granted_scopes_are_stored(
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    endpoint.rotate_refresh_tokens = True
    endpoint.granted_scopes = [GMAIL_SEND, GMAIL_READONLY]
    row = seed(expires_in=0)
    credentials = make_store().get_credentials(row.user_id)
    stored = fetch_row(row.user_id)
    assert stored["token_data"]["refresh_token"] not in (None, row.refresh_token)
    assert stored["scopes"] == [GMAIL_SEND, GMAIL_READONLY]
    assert credentials.scopes == [GMAIL_SEND, GMAIL_READONLY]


def test_access_token_is_written_back_under_the_legacy_key_it_was_read_from(
    store: TokenStore, seed: SeedRow, fetch_row: FetchRow
) -> None:
    row = seed(
        expires_in=0,
        token_data=Jsonb(
            {"token": "ya29.legacy-" + "x" * 20, "refresh_token": "1//legacy-refresh"}
        ),
    )
    credentials = store.get_credentials(row.user_id)
    token_data = fetch_row(row.user_id)["token_data"]
    assert token_data == {"token": credentials.token, "refresh_token": "1//legacy-refresh"}


def _token_json_layout(endpoint: FakeTokenEndpoint, expires_in: float = 3600) -> dict[str, Any]:
    return {
        "token": "ya29.from-token-json-" + "t" * 16,
        "refresh_token": "1//from-token-json",
        "token_uri": endpoint.token_uri,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": [GMAIL_SEND],
        "expiry": (datetime.now(UTC) + timedelta(seconds=expires_in))
        .isoformat()
        .replace("+00:00", "Z"),
    }


@pytest.mark.parametrize(
    "shape",
    [
        "token_data as JSON text",
        "oauth_config as JSON text",
        "metadata as JSON text",
        "scopes space-separated",
        "scopes as JSON text",
        "token.json layout in token_data, other columns NULL",
    ],
)
def test_tolerant_reading_of_rows_written_by_older_programs(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, shape: str
) -> None:
    columns: dict[str, Any] = {}
    expected_token: str | None = None
    if shape == "token_data as JSON text":
        expected_token = "ya29.text-" + "a" * 20
        columns["token_data"] = Jsonb(
            json.dumps({"access_token": expected_token, "refresh_token": "1//r"})
        )
    elif shape == "oauth_config as JSON text":
        config = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "token_uri": endpoint.token_uri,
        }
        columns["oauth_config"] = Jsonb(json.dumps(config))
    elif shape == "metadata as JSON text":
        columns["metadata"] = Jsonb(json.dumps({"email": "text@gmail.com"}))
    elif shape == "scopes space-separated":
        columns["scopes"] = Jsonb(f"{GMAIL_SEND} {GMAIL_READONLY}")
    elif shape == "scopes as JSON text":
        columns["scopes"] = Jsonb(json.dumps([GMAIL_SEND, GMAIL_READONLY]))
    else:
        layout = _token_json_layout(endpoint, expires_in=-60)
        expected_token = layout["token"]
        columns.update(token_data=Jsonb(layout), oauth_config=None, scopes=None, expiry=None)
    row = seed(expires_in=0, **columns)

    credentials = store.get_credentials(row.user_id, scopes=[GMAIL_SEND])

    # Each of these rows is due, so reading it fully (client, token_uri, refresh token)
    # is proven by a successful refresh.
    [request] = endpoint.refresh_requests()
    assert request.client_id == CLIENT_ID and request.client_secret == CLIENT_SECRET
    assert credentials.token == request.issued_access_token
    assert expected_token is None or expected_token != credentials.token
    if shape == "metadata as JSON text":
        assert store.check(row.user_id).email == "text@gmail.com"


def test_token_json_expiry_is_used_when_the_column_is_null(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    layout = _token_json_layout(endpoint)
    row = seed(token_data=Jsonb(layout), oauth_config=None, scopes=None, expiry=None)
    credentials = store.get_credentials(row.user_id)
    assert credentials.token == layout["token"]
    assert endpoint.requests == []


def test_timestamptz_expiry_is_read_and_written_as_the_same_instant(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow, fetch_row: FetchRow
) -> None:
    # Some deployments declared expiry WITH time zone; the session zone must not matter.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE gmail_token ALTER COLUMN expiry TYPE timestamptz")
        conn.execute("ALTER DATABASE test SET timezone TO 'America/New_York'")
    try:
        fresh = seed(expiry=datetime.now(UTC) + timedelta(hours=1))
        due = seed(expiry=datetime.now(UTC) + timedelta(seconds=30))
        store = make_store()
        fresh_credentials = store.get_credentials(fresh.user_id)
        assert fresh_credentials.token == fresh.access_token
        assert fresh_credentials.expiry is not None
        assert abs((fresh_credentials.expiry - utcnow()).total_seconds() - 3600) < 60
        refreshed = store.get_credentials(due.user_id)
        stored = fetch_row(due.user_id)["expiry"]
        assert stored.tzinfo is not None
        assert stored.astimezone(UTC).replace(tzinfo=None) == refreshed.expiry
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER DATABASE test RESET timezone")


def test_constructor_client_is_used_for_rows_without_one(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=0, oauth_config=Jsonb({"token_uri": endpoint.token_uri}))
    store = make_store(client_id="fallback-id", client_secret="fallback-secret")
    store.get_credentials(row.user_id)
    [request] = endpoint.refresh_requests()
    assert (request.client_id, request.client_secret) == ("fallback-id", "fallback-secret")


def test_missing_scope_raises_insufficient_scopes_naming_it(
    store: TokenStore, seed: SeedRow
) -> None:
    row = seed(scopes=(GMAIL_READONLY,))  # a login consent: cannot send mail
    with pytest.raises(InsufficientScopesError) as caught:
        store.get_credentials(row.user_id, scopes=[GMAIL_SEND])
    assert caught.value.missing_scopes == (GMAIL_SEND,)
    assert GMAIL_SEND in str(caught.value) and row.user_id in str(caught.value)
    assert "test@gmail.com" in str(caught.value)
    assert store.get_credentials(row.user_id, scopes=[GMAIL_READONLY]).token == row.access_token


def test_unknown_user_raises_token_not_found(store: TokenStore) -> None:
    user_id = "0b7e5d6a-0000-4000-8000-000000000001"
    with pytest.raises(TokenNotFoundError, match=user_id):
        store.get_credentials(user_id)


def test_refresh_reports_valid_without_a_request_and_refreshed_with_one(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)
    valid = store.refresh(row.user_id)
    assert valid.status == "valid" and valid.access_token == row.access_token
    assert 2900 < valid.expires_in <= 3000
    assert endpoint.requests == []

    forced = store.refresh(row.user_id, force=True)
    assert forced.status == "refreshed" and forced.access_token != row.access_token
    assert set(forced.to_dict()) == AUTH_SERVER_REFRESH_KEYS
    assert forced.to_dict()["email"] == "test@gmail.com"
    assert "access_token" not in forced.to_dict(include_token=False)
    assert len(endpoint.refresh_requests()) == 1


def test_check_reports_auth_server_keys_and_more(store: TokenStore, seed: SeedRow) -> None:
    row = seed(expires_in=120)
    report = store.check(row.user_id).to_dict()
    assert set(report) >= AUTH_SERVER_CHECK_KEYS
    assert report["status"] == "found"
    assert report["has_access_token"] and report["has_refresh_token"] and report["has_oauth_config"]
    assert report["is_expired"] is False and report["needs_refresh"] is True
    assert 100 < report["remaining_seconds"] <= 120
    assert report["state"] == "refresh-due"
    assert json.dumps(report)  # JSON-ready

    missing = store.check("0b7e5d6a-0000-4000-8000-000000000002").to_dict()
    assert missing["status"] == "not_found" and missing["has_token"] is False


@pytest.mark.parametrize(
    ("columns", "state"),
    [
        ({"expires_in": 3000}, "ok"),
        ({"expires_in": 100}, "refresh-due"),
        ({"expires_in": -100}, "expired"),
        ({"token_data": Jsonb({"access_token": "ya29.no-refresh-token-here"})}, "reauth-required"),
        ({"token_data": Jsonb("{not json")}, "broken"),
        ({"updated_at": datetime(2020, 1, 1)}, "idle"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_check_state(store: TokenStore, seed: SeedRow, columns: dict[str, Any], state: str) -> None:
    row = seed(**columns)
    status = store.check(row.user_id)
    assert status.state == state
    assert status.needs_attention == (state in {"reauth-required", "broken", "idle"})


def test_save_inserts_a_new_grant_in_the_seed_layout(
    store: TokenStore, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    user_id = "3f9c1e2a-1111-4111-8111-111111111111"
    expiry = utcnow() + timedelta(hours=1)
    credentials = Credentials(
        "ya29.saved-access-" + "s" * 12,
        refresh_token="1//saved-refresh",
        token_uri=endpoint.token_uri,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scopes=[GMAIL_SEND],
        expiry=expiry,
    )
    store.save(
        user_id,
        credentials,
        email="new@gmail.com",
        robeing_id="rb-1",
        metadata={"source_file": "t.json"},
    )
    stored = fetch_row(user_id)
    assert stored["token_data"] == {
        "access_token": credentials.token,
        "refresh_token": "1//saved-refresh",
        "token_type": "Bearer",
    }
    assert stored["oauth_config"] == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "token_uri": endpoint.token_uri,
    }
    assert stored["scopes"] == [GMAIL_SEND]
    assert stored["expiry"] == expiry
    assert stored["metadata"] == {"email": "new@gmail.com", "source_file": "t.json"}
    assert stored["robeing_id"] == "rb-1"
    assert store.get_credentials(user_id).token == credentials.token


def test_save_replaces_a_grant_keeping_other_metadata_and_clearing_the_failure(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    row = seed(
        metadata=Jsonb(
            {"email": "old@gmail.com", "team": "x", FAILURE_KEY: {"error": "invalid_grant"}}
        ),
        is_equipped=True,
    )
    store.save(
        row.user_id,
        Credentials(
            "ya29.replaced-" + "r" * 16,
            refresh_token="1//replaced",
            token_uri=endpoint.token_uri,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            expiry=utcnow() + timedelta(hours=1),
        ),
    )
    stored = fetch_row(row.user_id)
    assert stored["metadata"] == {"email": "old@gmail.com", "team": "x"}
    assert stored["token_data"]["refresh_token"] == "1//replaced"
    assert stored["is_equipped"] is True and stored["robeing_id"] == "robeing-1"
    assert stored["scopes"] == [GMAIL_SEND]  # the credentials named none: the row's stay


def test_refresh_is_logged_at_info_with_user_email_and_expiry(
    store: TokenStore, seed: SeedRow, caplog: pytest.LogCaptureFixture
) -> None:
    row = seed(expires_in=0)
    with caplog.at_level(logging.INFO, logger="gmail_token_store"):
        credentials = store.get_credentials(row.user_id)
    [record] = [
        r for r in caplog.records if r.name == "gmail_token_store" and r.levelno == logging.INFO
    ]
    assert row.user_id in record.getMessage() and "test@gmail.com" in record.getMessage()
    assert str(credentials.expiry)[:16] in record.getMessage()


def test_hot_path_is_one_select_in_autocommit_without_begin_or_set(
    traced_store: tuple[TokenStore, StatementCounter], seed: SeedRow
) -> None:
    store, counter = traced_store
    row = seed(expires_in=3000)
    store.get_credentials(row.user_id)  # let the pool settle
    counter.reset()
    store.get_credentials(row.user_id)
    sent = counter.sent()
    syncs = [message for message in sent if message.startswith("Sync")]
    queries = [message for message in sent if message.startswith("Query")]
    assert len(syncs) == 1, sent  # one extended-protocol round trip
    assert queries == [], sent  # no BEGIN / SET / COMMIT
    assert any(
        "FOR NO KEY UPDATE" not in m and "SELECT" in m for m in sent if m.startswith("Parse")
    )


def test_module_level_get_credentials_uses_one_store_from_the_environment(
    dsn: str, seed: SeedRow, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = seed(expires_in=3000)
    monkeypatch.setenv("GMAIL_TOKEN_STORE_DSN", "")  # empty counts as unset
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setattr(gmail_token_store._default, "_store", None)
    created: list[TokenStore] = []
    original = TokenStore.from_env.__func__  # type: ignore[attr-defined]

    def counting_from_env(cls: type[TokenStore], /, **overrides: Any) -> TokenStore:
        store: TokenStore = original(cls, **overrides)
        created.append(store)
        return store

    monkeypatch.setattr(TokenStore, "from_env", classmethod(counting_from_env))
    tokens = call_together(8, lambda: gmail_token_store.get_credentials(row.user_id).token)
    try:
        assert tokens == [row.access_token] * 8
        assert len(created) == 1
    finally:
        for store in created:
            store.close()


def test_from_env_prefers_its_own_variable_and_reads_the_client(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = seed(
        expires_in=0, oauth_config=None, token_data=Jsonb({"refresh_token": "1//only-refresh"})
    )
    monkeypatch.setenv("GMAIL_TOKEN_STORE_DSN", dsn)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setenv("GOOGLE_CLIENT_ID", "env-client")
    monkeypatch.setenv("GOOGLE_CLIENT_SECRET", "env-secret")
    with TokenStore.from_env(cache_ttl=0) as store:
        # The env client is only a fallback, and token_uri defaults to Google's: point
        # this row at the fake endpoint through token_data.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE gmail_token SET token_data = token_data || %s WHERE user_id = %s",
                (Jsonb({"token_uri": endpoint.token_uri}), row.user_id),
            )
        store.get_credentials(row.user_id)
    [request] = endpoint.refresh_requests()
    assert (request.client_id, request.client_secret) == ("env-client", "env-secret")


def test_from_env_without_any_dsn_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GMAIL_TOKEN_STORE_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", "  ")
    with pytest.raises(ConfigurationError, match="GMAIL_TOKEN_STORE_DSN"):
        TokenStore.from_env()
