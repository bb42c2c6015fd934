"""Notices: a signed message per grant and event, once, to a real HTTP receiver that checks
every signature with the `standardwebhooks` package, as a consumer would."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb
from standardwebhooks import Webhook

from gmail_token_store import TokenStore
from gmail_token_store._core import notices as core_notices
from gmail_token_store._core.record import fingerprint
from gmail_token_store.notices import send_notices, send_notices_async
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow
from helpers import SCRIPT, AsyncFacade, Cli

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"notice-signing-key-" + b"K" * 13).decode()
LINK_SECRET = "consent-link-secret-" + "L" * 20
PUBLIC_URL = "https://mail.example.com"


class Receiver:
    """A webhook receiver on loopback: verifies each message's signature, records it;
    `down` makes it answer 503."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.down = False
        self.lock = threading.Lock()
        receiver = self
        webhook = Webhook(WEBHOOK_SECRET)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                message = webhook.verify(body, dict(self.headers))  # raises if forged
                with receiver.lock:
                    receiver.messages.append(message)
                    receiver.ids.append(self.headers["webhook-id"])
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gmail"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        return [(m["type"], m["data"]["user_id"]) for m in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    webhook = Receiver()
    yield webhook
    webhook.close()


def notify(store: TokenStore, receiver: Receiver, **options: Any) -> Any:
    """`send_notices` for a TokenStore, `send_notices_async` for an AsyncFacade's store."""
    options = {
        "secret": WEBHOOK_SECRET,
        "public_url": PUBLIC_URL,
        "link_secret": LINK_SECRET,
        **options,
    }
    if isinstance(store, AsyncFacade):
        return store.call(send_notices_async(store.store, receiver.url, **options))
    return send_notices(store, receiver.url, **options)


@pytest.fixture
def table(seed: SeedRow, dsn: str) -> dict[str, str]:
    """One grant per kind: healthy, dead, broken, idle, and one consented 6 days ago."""
    healthy, dead_row, broken, idle, testing_app = (seed() for _ in range(5))
    dead = dead_row.user_id
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET metadata = metadata || %s WHERE user_id = %s",
            (
                Jsonb(
                    {
                        "refresh_failure": {
                            "error": "invalid_grant",
                            "description": "Token has been expired or revoked.",
                            "at": "2026-12-01T00:00:00Z",
                            "refresh_token_fingerprint": fingerprint(dead_row.refresh_token),
                        }
                    }
                ),
                dead,
            ),
        )
        conn.execute(
            "UPDATE gmail_token SET token_data = '[]' WHERE user_id = %s", (broken.user_id,)
        )
        conn.execute(
            "UPDATE gmail_token SET updated_at = now() - interval '160 days' WHERE user_id = %s",
            (idle.user_id,),
        )
        six_days_ago = (datetime.now(UTC) - timedelta(days=6)).isoformat(timespec="seconds")
        conn.execute(
            "UPDATE gmail_token SET metadata = metadata || %s WHERE user_id = %s",
            (
                Jsonb(
                    {
                        "google_account_id": "1" * 21,
                        "account_verified": True,
                        "consented_at": six_days_ago,
                    }
                ),
                testing_app.user_id,
            ),
        )
    return {
        "healthy": healthy.user_id,
        "dead": dead,
        "broken": broken.user_id,
        "idle": idle.user_id,
        "testing_app": testing_app.user_id,
    }


@pytest.mark.parametrize("page_rows", [2000, 2])  # the table in one page, and in three
def test_each_grant_that_needs_a_person_gets_one_signed_message(
    make_store: Callable[..., TokenStore],
    table: dict[str, str],
    receiver: Receiver,
    page_rows: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core_notices, "PAGE_ROWS", page_rows)
    store = make_store()
    report = notify(store, receiver, consent_lifetime=7 * 86_400, warn_before=2 * 86_400)
    expected = {
        ("grant.dead", table["dead"]),
        ("grant.broken", table["broken"]),
        ("grant.idle", table["idle"]),
        ("grant.expiring", table["testing_app"]),
    }
    assert set(receiver.events()) == expected and len(receiver.messages) == 4
    assert report.checked == 5 and len(report.sent) == 4 and report.failed == []
    for message in receiver.messages:
        data = message["data"]
        assert data["reconnect_link"].startswith(PUBLIC_URL + "/auth/gmail/passport?user_id=")
        assert data["user_id"] in data["reconnect_link"] and data["state"]
    dead = next(m for m in receiver.messages if m["type"] == "grant.dead")["data"]
    assert dead["state"] == "reauth-required" and "invalid_grant" in dead["reason"]
    text = json.dumps(receiver.messages)
    assert LINK_SECRET not in text and "ya29." not in text and "1//" not in text

    notify(store, receiver, consent_lifetime=7 * 86_400, warn_before=2 * 86_400)
    assert len(receiver.messages) == 4  # once per event: nothing new, nothing again


def test_concurrent_runs_send_each_notice_once(
    dsn: str, table: dict[str, str], receiver: Receiver
) -> None:
    env = {
        **os.environ,
        "GMAIL_TOKEN_STORE_DSN": dsn,
        "GMAIL_TOKEN_STORE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GMAIL_TOKEN_STORE_SECRET": LINK_SECRET,
    }
    assert SCRIPT is not None
    runs = [
        subprocess.Popen(
            [SCRIPT, "notify", "--webhook", receiver.url, "--public-url", PUBLIC_URL],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, (out, err)
    assert sorted(receiver.events()) == sorted(
        [
            ("grant.dead", table["dead"]),
            ("grant.broken", table["broken"]),
            ("grant.idle", table["idle"]),
        ]
    )
    assert len(set(receiver.ids)) == 3


def test_a_receiver_that_is_down_gets_the_message_next_run_with_the_same_id(
    make_store: Callable[..., TokenStore], table: dict[str, str], receiver: Receiver
) -> None:
    store = make_store()
    receiver.down = True
    report = notify(store, receiver)
    assert len(report.failed) == 3 and receiver.messages == []
    receiver.down = False
    report = notify(store, receiver)
    assert len(report.sent) == 3 and len(receiver.messages) == 3
    notify(store, receiver)
    assert len(receiver.messages) == 3


def test_a_grant_that_recovers_gets_a_reconnected_message(
    make_store: Callable[..., TokenStore],
    table: dict[str, str],
    receiver: Receiver,
    endpoint: FakeTokenEndpoint,
) -> None:
    store = make_store()
    notify(store, receiver)
    store.save(
        table["dead"],
        Credentials(
            "ya29.new",
            refresh_token="1//new",
            token_uri=endpoint.token_uri,
            client_id="c",
            client_secret="s",
            expiry=datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1),
        ),
    )
    notify(store, receiver)
    assert receiver.events()[-1] == ("grant.reconnected", table["dead"])
    assert receiver.messages[-1]["data"]["reconnect_link"] is None
    notify(store, receiver)
    assert len([e for e in receiver.events() if e[0] == "grant.reconnected"]) == 1


def test_notify_and_refresh_all_notify_from_the_command(
    cli: Cli, table: dict[str, str], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GMAIL_TOKEN_STORE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("GMAIL_TOKEN_STORE_SECRET", LINK_SECRET)
    result = cli("refresh-all", "--notify", receiver.url, "--public-url", PUBLIC_URL)
    assert result.returncode == 1  # rows need a person: the keepalive's own exit code
    # The keepalive refreshed the idle grant first: it needs nobody any more.
    assert "notify: 5 grants, 2 notices sent, 0 failed" in result.stdout
    assert f"sent: {table['dead']}" in result.stdout and table["idle"] not in result.stdout
    slack = cli(
        "notify", "--webhook", receiver.url, "--format", "slack", "--public-url", PUBLIC_URL
    )
    assert slack.returncode == 0 and "0 notices sent" in slack.stdout
    monkeypatch.setenv("GMAIL_TOKEN_STORE_WEBHOOK_SECRET", "not-a-whsec")
    bad = cli("notify", "--webhook", receiver.url, "--public-url", PUBLIC_URL)
    assert bad.returncode == 1 and "whsec_" in bad.stderr and "Traceback" not in bad.stderr
