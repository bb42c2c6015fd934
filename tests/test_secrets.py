"""No access token, refresh token, client secret or DSN password in logs, reprs or errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from psycopg.types.json import Jsonb

from gmail_token_store import TokenEvent, TokenStore, TokenStoreError
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer, Reply

from conftest import CLIENT_SECRET, SeedRow

DSN_PASSWORD = "dsn-password-" + "P" * 12


def test_no_secret_reaches_logs_reprs_or_error_messages(
    postgres: PostgresServer,
    dsn: str,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, ours and our dependencies'
    endpoint.rotate_refresh_tokens = True
    events: list[TokenEvent] = []
    # The test server's DSN carries its password: it can be followed everywhere the DSN goes.
    assert postgres.password in dsn
    store = make_store(conninfo=dsn, cache_ttl=60, on_event=events.append, http_timeout=0.5)
    shown: list[str] = [repr(store), str(store)]

    fresh, due, revoked, outage, client = (seed(expires_in=e) for e in (3000, 10, 0, -5, -5))
    endpoint.revoke(revoked.refresh_token)

    for row in (fresh, due):
        credentials = store.get_credentials(row.user_id)
        shown += [repr(credentials), str(credentials)]
        result = store.refresh(row.user_id, force=True)
        shown += [repr(result), str(result), json.dumps(result.to_dict(include_token=False))]
    failures: list[TokenStoreError] = []
    for row, reply in (
        (revoked, Reply.OK),
        (outage, Reply.SERVER_ERROR),
        (client, Reply.INVALID_CLIENT),
    ):
        endpoint.default = reply
        with pytest.raises(TokenStoreError) as caught:
            store.get_credentials(row.user_id)
        failures.append(caught.value)
    endpoint.default = Reply.OK
    broken = seed(
        oauth_config=Jsonb(
            {"client_secret": CLIENT_SECRET, "token_uri": "https://evil.example.com/t"}
        )
    )
    with pytest.raises(TokenStoreError) as caught:
        store.get_credentials(broken.user_id)
    failures.append(caught.value)
    down = make_store(
        conninfo=f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:1/test", connect_timeout=0.5
    )
    with pytest.raises(TokenStoreError) as caught:
        down.get_credentials(fresh.user_id)
    failures.append(caught.value)

    for error in failures:
        chain: BaseException | None = error
        while chain is not None:  # the causes are printed in tracebacks too
            shown += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    for row in (fresh, due, revoked, outage, client, broken):
        status = store.check(row.user_id)
        shown += [repr(status), json.dumps(status.to_dict())]
    shown += [repr(event) for event in events]
    shown += [repr(request) for request in endpoint.requests]

    secrets = {CLIENT_SECRET, DSN_PASSWORD, postgres.password}
    for row in (fresh, due, revoked, outage, client, broken):
        secrets |= {row.access_token, row.refresh_token}
    for request in endpoint.requests:
        secrets |= {
            token for token in (request.issued_access_token, request.refresh_token) if token
        }
    assert len(secrets) > 14
    text = (
        "\n".join(shown) + "\n" + caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    )
    leaked = sorted(secret for secret in secrets if secret in text)
    assert leaked == []
    assert len(caplog.records) > 5 and len(shown) > 40  # the scenario really produced output
