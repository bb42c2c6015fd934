"""Failures: revoked grants, client errors, outages, a hung endpoint, locks, a killed refresher."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

from gmail_token_store import (
    DatabaseUnavailableError,
    OAuthClientError,
    ReauthRequiredError,
    RefreshFailedError,
    TokenEvent,
    TokenStore,
)
from gmail_token_store._core.record import FAILURE_KEY, fingerprint
from gmail_token_store.testing import FakeTokenEndpoint, Reply

from conftest import CLIENT_ID, CLIENT_SECRET, SeedRow, utcnow
from helpers import wait_until
from workers import refresh_forever

FetchRow = Callable[[str], dict[str, Any]]


# --- a dead grant -------------------------------------------------------------------------


def test_revoked_grant_raises_reauth_required_and_records_the_failure(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    row = seed(expires_in=0)
    endpoint.revoke(row.refresh_token)

    with pytest.raises(ReauthRequiredError) as caught:
        store.get_credentials(row.user_id)

    error = caught.value
    assert (error.user_id, error.email) == (row.user_id, "test@gmail.com")
    assert "invalid_grant" in error.reason and "re-authorize" in str(error)
    stored = fetch_row(row.user_id)
    failure = stored["metadata"][FAILURE_KEY]
    assert failure["error"] == "invalid_grant"
    assert failure["description"] == "Token has been expired or revoked."
    assert failure["refresh_token_fingerprint"] == fingerprint(row.refresh_token)
    assert row.refresh_token not in str(stored["metadata"])
    assert stored["token_data"]["refresh_token"] == row.refresh_token  # never erased
    assert stored["metadata"]["email"] == "test@gmail.com"


def test_recorded_failure_makes_later_calls_fail_at_once_without_a_request(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=0)
    endpoint.revoke(row.refresh_token)
    with pytest.raises(ReauthRequiredError):
        make_store().get_credentials(row.user_id)

    other_process_store = make_store()
    for call in (other_process_store.get_credentials, other_process_store.refresh):
        with pytest.raises(ReauthRequiredError, match="invalid_grant"):
            call(row.user_id)
    assert len(endpoint.refresh_requests()) == 1
    status = other_process_store.check(row.user_id)
    assert status.state == "reauth-required" and status.needs_reauth
    assert status.last_error is not None and status.last_error["error"] == "invalid_grant"


@pytest.mark.parametrize("how", ["save()", "another writer"])
def test_a_new_refresh_token_clears_the_recorded_failure(
    dsn: str,
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    how: str,
) -> None:
    row = seed(expires_in=0)
    endpoint.revoke(row.refresh_token)
    with pytest.raises(ReauthRequiredError):
        store.get_credentials(row.user_id)

    if how == "save()":
        store.save(
            row.user_id,
            Credentials(
                None,
                refresh_token="1//new-consent",
                token_uri=endpoint.token_uri,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
            ),
        )
    else:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE gmail_token SET token_data = token_data || %s WHERE user_id = %s",
                (Jsonb({"refresh_token": "1//new-consent"}), row.user_id),
            )

    credentials = store.get_credentials(row.user_id)
    assert credentials.valid
    assert endpoint.refresh_requests()[-1].refresh_token == "1//new-consent"
    assert FAILURE_KEY not in fetch_row(row.user_id)["metadata"]


def test_row_without_refresh_token_needs_reauth_once_its_token_is_due(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=0, token_data=Jsonb({"access_token": "ya29.lonely-" + "l" * 16}))
    with pytest.raises(ReauthRequiredError, match="no refresh token"):
        store.get_credentials(row.user_id)
    assert endpoint.requests == []


@pytest.mark.parametrize(
    "reply", [Reply.INVALID_CLIENT, Reply.UNAUTHORIZED_CLIENT, Reply.DELETED_CLIENT]
)
def test_client_errors_raise_oauth_client_error_and_record_nothing(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, fetch_row: FetchRow, reply: Reply
) -> None:
    row = seed(expires_in=0)
    endpoint.default = reply
    with pytest.raises(OAuthClientError, match=reply.value) as caught:
        store.get_credentials(row.user_id)
    assert "operator" in str(caught.value)
    assert FAILURE_KEY not in fetch_row(row.user_id)["metadata"]
    assert len(endpoint.refresh_requests()) == 1  # not retried: it will not get better


# --- passing failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply", [Reply.SERVER_ERROR, Reply.UNAVAILABLE, Reply.RATE_LIMITED, Reply.BAD_GATEWAY_HTML]
)
def test_transient_failure_then_success_refreshes(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, reply: Reply
) -> None:
    row = seed(expires_in=0)
    endpoint.script(reply)
    credentials = store.get_credentials(row.user_id)
    requests = endpoint.refresh_requests()
    assert [r.reply for r in requests] == [reply, Reply.OK]
    assert credentials.token == requests[-1].issued_access_token


@pytest.mark.parametrize("reply", [Reply.SERVER_ERROR, Reply.BAD_GATEWAY_HTML, Reply.UNAVAILABLE])
def test_outage_with_an_expired_token_raises_retryable_refresh_failed(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, fetch_row: FetchRow, reply: Reply
) -> None:
    row = seed(expires_in=-10)
    endpoint.default = reply
    with pytest.raises(RefreshFailedError) as caught:
        store.get_credentials(row.user_id)
    assert caught.value.retryable and "retry later" in str(caught.value)
    # An outage is not a revoked grant: nothing recorded, next call tries again.
    assert FAILURE_KEY not in fetch_row(row.user_id)["metadata"]
    endpoint.default = Reply.OK
    assert store.get_credentials(row.user_id).valid


def test_outage_with_a_still_valid_token_serves_it_with_a_warning(
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[TokenEvent] = []
    store = make_store(on_event=events.append)
    row = seed(expires_in=30)  # inside the mandatory window, not yet expired
    endpoint.default = Reply.BAD_GATEWAY_HTML
    with caplog.at_level(logging.WARNING, logger="gmail_token_store"):
        credentials = store.get_credentials(row.user_id)
    assert credentials.token == row.access_token
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert row.user_id in warning.getMessage() and "still-valid" in warning.getMessage()
    assert [event.kind for event in events] == ["refresh_failed", "served_stale"]
    assert events[-1].user_id == row.user_id and events[-1].email == "test@gmail.com"


def test_explicit_refresh_raises_during_an_outage_even_with_a_valid_token(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=30)
    endpoint.default = Reply.SERVER_ERROR
    with pytest.raises(RefreshFailedError):
        store.refresh(row.user_id)


def test_hung_endpoint_is_abandoned_within_the_time_budget(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    store = make_store(http_timeout=0.5)
    row = seed(expires_in=-10)
    endpoint.default = Reply.HANG
    began = time.monotonic()
    with pytest.raises(RefreshFailedError, match="did not answer in time"):
        store.get_credentials(row.user_id)
    # The contract: about 3 x http_timeout plus backoff, never google-auth's 120 s.
    assert time.monotonic() - began < 3 * 0.5 + 3
    assert 1 <= len(endpoint.refresh_requests()) <= 3


def test_unreachable_endpoint_raises_refresh_failed(
    store: TokenStore, seed: SeedRow, dsn: str
) -> None:
    with FakeTokenEndpoint() as gone:
        token_uri = gone.token_uri
    row = seed(
        expires_in=-10,
        oauth_config=Jsonb(
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "token_uri": token_uri}
        ),
    )
    with pytest.raises(RefreshFailedError, match="could not be reached"):
        store.get_credentials(row.user_id)


# --- locks --------------------------------------------------------------------------------


def _hold_row_lock(dsn: str, user_id: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn)
    conn.execute("SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE", (user_id,))
    return conn


def test_lock_held_elsewhere_with_an_expired_token_times_out_as_refresh_failed(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    events: list[TokenEvent] = []
    store = make_store(lock_timeout=0.5, on_event=events.append)
    row = seed(expires_in=-10)
    with (
        _hold_row_lock(dsn, row.user_id),
        pytest.raises(RefreshFailedError, match="row lock") as caught,
    ):
        store.get_credentials(row.user_id)
    assert caught.value.retryable
    assert [event.kind for event in events] == ["lock_timeout"]
    assert endpoint.requests == []


def test_lock_held_elsewhere_inside_the_mandatory_window_serves_the_valid_token(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    store = make_store(lock_timeout=0.5)
    row = seed(expires_in=40)
    with _hold_row_lock(dsn, row.user_id):
        assert store.get_credentials(row.user_id).token == row.access_token
    assert endpoint.requests == []


def test_lock_held_elsewhere_inside_the_advisory_window_does_not_wait(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    events: list[TokenEvent] = []
    store = make_store(lock_timeout=30, on_event=events.append)
    row = seed(expires_in=120)
    with _hold_row_lock(dsn, row.user_id):
        assert store.get_credentials(row.user_id).token == row.access_token
    assert events == []  # no lock wait, no stale-serving: the refresher is elsewhere
    assert endpoint.requests == []


def test_refresher_killed_mid_refresh_leaves_the_row_intact_for_the_next_caller(
    dsn: str,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    row = seed(expires_in=-10)
    before = fetch_row(row.user_id)
    endpoint.script(Reply.HANG)
    child = multiprocessing.get_context("spawn").Process(
        target=refresh_forever, args=(dsn, row.user_id)
    )
    child.start()
    try:
        wait_until(lambda: len(endpoint.refresh_requests()) == 1)  # it holds the lock now
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
    finally:
        if child.is_alive():
            child.kill()
    assert fetch_row(row.user_id) == before  # nothing half-written

    # The dead process's transaction is rolled back as soon as PostgreSQL sees its socket
    # close: the next caller gets the lock well within lock_timeout and refreshes.
    store = make_store(lock_timeout=10)
    credentials = store.get_credentials(row.user_id)
    requests = endpoint.refresh_requests()
    assert len(requests) == 2 and credentials.token == requests[-1].issued_access_token
    after = fetch_row(row.user_id)
    assert after["token_data"]["refresh_token"] == row.refresh_token
    assert after["metadata"] == before["metadata"]


def test_database_down_raises_database_unavailable(make_store: Callable[..., TokenStore]) -> None:
    store = make_store(conninfo="postgresql://postgres@127.0.0.1:1/test", connect_timeout=0.5)
    with pytest.raises(DatabaseUnavailableError) as caught:
        store.get_credentials("0b7e5d6a-0000-4000-8000-000000000003")
    assert caught.value.retryable


def test_expiry_after_failed_refresh_is_not_extended(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    row = seed(expires_in=30)
    endpoint.default = Reply.SERVER_ERROR
    store.get_credentials(row.user_id)
    stored = fetch_row(row.user_id)
    assert stored["token_data"]["access_token"] == row.access_token
    assert stored["expiry"] < utcnow() + timedelta(seconds=31)


def _kill_the_refreshers_connection(dsn: str) -> None:
    """Terminate the backend that holds a row lock while its token request is in flight."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE state = 'idle in transaction' AND query LIKE %s",
                    ("%FOR NO KEY UPDATE%",),
                ).fetchall()
                != []
            )
        )


@pytest.mark.parametrize(
    "other_writer",
    [None, "touched updated_at", "saved a new consent"],
    ids=["row untouched", "row touched meanwhile", "new consent meanwhile"],
)
def test_grant_survives_losing_the_connection_during_the_token_request(
    dsn: str,
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    other_writer: str | None,
) -> None:
    endpoint.latency = 1.0  # the window in which the database connection dies
    endpoint.rotate_refresh_tokens = True  # the case where losing the answer would hurt
    row = seed(expires_in=-10)
    outcome: list[Any] = []
    caller = threading.Thread(target=lambda: outcome.append(store.get_credentials(row.user_id)))
    caller.start()
    _kill_the_refreshers_connection(dsn)
    change = {
        None: None,
        "touched updated_at": "UPDATE gmail_token SET updated_at = CURRENT_TIMESTAMP",
        "saved a new consent": "UPDATE gmail_token SET token_data = token_data"
        ' || \'{"refresh_token": "1//new-consent", "access_token": "ya29.new-consent"}\'',
    }[other_writer]
    if change is not None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(change + " WHERE user_id = %s", (row.user_id,))
    caller.join(timeout=30)

    [request] = endpoint.refresh_requests()
    [credentials] = outcome
    assert credentials.token == request.issued_access_token  # the caller got the new token
    stored = fetch_row(row.user_id)["token_data"]
    if other_writer == "saved a new consent":  # a newer grant is never overwritten
        assert stored["refresh_token"] == "1//new-consent"
        assert stored["access_token"] == "ya29.new-consent"
    else:  # saved on a fresh connection, rotated refresh token included: the row had
        # nothing newer than what we got, only the refresh token the rotation replaced
        assert stored["access_token"] == request.issued_access_token
        assert stored["refresh_token"] not in (row.refresh_token, None)
