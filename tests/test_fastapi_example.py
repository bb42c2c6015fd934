"""examples/fastapi_service.py through a real uvicorn server, googleapiclient and all.

The fake Gmail API rejects the seeded token (401): googleapiclient refreshes the
Credentials in Starlette's worker thread, through the AsyncTokenStore on the server's event
loop, and the message goes out with the new token, persisted in the row.
"""

from __future__ import annotations

import base64
import email
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow
from helpers import FakeGmailApi

EXAMPLES = Path(__file__).parent.parent / "examples"
FetchRow = Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def service(dsn: str, gmail_api: FakeGmailApi) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "GMAIL_TOKEN_STORE_DSN": dsn, "GMAIL_API_ENDPOINT": gmail_api.root}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(EXAMPLES),
            "--port",
            str(port),
            "--log-level",
            "info",
            "fastapi_service:app",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/docs", timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None, "uvicorn exited"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()  # a graceful shutdown: the lifespan closes the store
        _, log = server.communicate(timeout=30)
        # uvicorn re-raises the signal once it has shut down, hence -SIGTERM.
        assert server.returncode in (0, -15), log
        assert "Application shutdown complete" in log and "Traceback" not in log, log


def test_the_service_sends_through_googleapiclient_refreshing_via_the_store(
    service: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    gmail_api: FakeGmailApi,
    fetch_row: FetchRow,
) -> None:
    row = seed(expires_in=3000)  # valid by its expiry; the fake API answers 401 to it
    mail = {"to": "friend@example.com", "subject": "hello", "body": "from the service"}

    response = requests.post(f"{service}/users/{row.user_id}/send", json=mail, timeout=30)

    assert response.status_code == 200, response.text
    assert response.json()["labelIds"] == ["SENT"]
    [request] = endpoint.refresh_requests()
    assert gmail_api.seen == [row.access_token, request.issued_access_token]
    raw = json.loads(gmail_api.sent[-1])["raw"]
    assert email.message_from_bytes(base64.urlsafe_b64decode(raw))["To"] == mail["to"]
    assert fetch_row(row.user_id)["token_data"]["access_token"] == request.issued_access_token


def test_the_service_answers_409_when_the_user_must_consent(service: str) -> None:
    mail = {"to": "a@example.com", "subject": "s", "body": "b"}
    response = requests.post(f"{service}/users/{uuid.uuid4()}/send", json=mail, timeout=30)
    assert response.status_code == 409
    assert response.json()["detail"]["error"] == "gmail_consent_required"
