"""gmail_token_store.testing is public: its fake endpoint and servers behave as documented."""

from __future__ import annotations

import time

import pytest
import requests

from gmail_token_store import testing
from gmail_token_store.testing import FakeTokenEndpoint, Reply


def post_refresh(endpoint: FakeTokenEndpoint, refresh_token: str = "1//r") -> requests.Response:
    return requests.post(
        endpoint.token_uri,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "c"},
        timeout=10,
    )


def test_fake_endpoint_answers_scripted_replies_in_order_then_the_default(
    endpoint: FakeTokenEndpoint,
) -> None:
    endpoint.script(Reply.SERVER_ERROR, Reply.BAD_GATEWAY_HTML, Reply.RATE_LIMITED)
    answers = [post_refresh(endpoint) for _ in range(4)]
    assert [a.status_code for a in answers] == [500, 502, 429, 200]
    assert answers[1].headers["Content-Type"] == "text/html"
    assert answers[3].json()["access_token"] == endpoint.requests[3].issued_access_token
    assert [r.reply for r in endpoint.requests] == [
        Reply.SERVER_ERROR,
        Reply.BAD_GATEWAY_HTML,
        Reply.RATE_LIMITED,
        Reply.OK,
    ]


def test_fake_endpoint_revokes_only_the_given_refresh_token(endpoint: FakeTokenEndpoint) -> None:
    endpoint.revoke("1//dead")
    dead, alive = post_refresh(endpoint, "1//dead"), post_refresh(endpoint, "1//alive")
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert alive.status_code == 200


def test_fake_endpoint_hang_holds_the_request_until_released(endpoint: FakeTokenEndpoint) -> None:
    endpoint.default = Reply.HANG
    began = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_refresh_with_timeout(endpoint, 0.3)
    assert time.monotonic() - began >= 0.3
    endpoint.release()
    with pytest.raises(requests.exceptions.ConnectionError):
        post_refresh_with_timeout(endpoint, 5)  # released hangs close without an answer


def post_refresh_with_timeout(endpoint: FakeTokenEndpoint, timeout: float) -> None:
    requests.post(endpoint.token_uri, data={"grant_type": "refresh_token"}, timeout=timeout)


def test_fake_endpoint_latency_delays_every_answer() -> None:
    with FakeTokenEndpoint(latency=0.2) as endpoint:
        began = time.monotonic()
        assert post_refresh(endpoint).status_code == 200
        assert time.monotonic() - began >= 0.2


def test_missing_server_binary_says_which_package_to_install() -> None:
    with pytest.raises(RuntimeError, match="install the Debian package `no-such-package`"):
        testing._servers._find_binary("no-such-binary-gmail-token-store", "no-such-package")
