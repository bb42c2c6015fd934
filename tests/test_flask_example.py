"""examples/flask_consent.py on a real server (werkzeug's, in a thread): a TokenStore's
`ConsentFlow` behind Flask routes, the fake Google's consent page posted by the test, and
requests' cookie jar as the browser."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from psycopg.types.json import Jsonb
from werkzeug.serving import make_server

from gmail_token_store import GMAIL_SEND, TokenStore
from gmail_token_store.consent import ConsentFlow
from gmail_token_store.testing import FakeAccount, FakeTokenEndpoint

from conftest import CLIENT_ID, CLIENT_SECRET, Seeded, SeedRow
from helpers import CONSENT_SECRET, leaked, query_of

EXAMPLE = Path(__file__).parent.parent / "examples" / "flask_consent.py"
FetchRow = Callable[[str], dict[str, Any]]


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flask_consent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Service:
    url: str
    flow: ConsentFlow

    def link(self, user_id: str, **options: Any) -> str:
        return self.flow.reconnect_link(user_id, **options)


@contextmanager
def served(dsn: str, endpoint: FakeTokenEndpoint, *, scheme: str = "http") -> Iterator[Service]:
    """The example's app on werkzeug's server; the flow's redirect URI names its port."""
    app: list[Any] = []

    def dispatch(environ: Any, respond: Any) -> Any:
        return app[0](environ, respond)  # built once the port is known

    server = make_server("127.0.0.1", 0, dispatch)
    url = f"http://127.0.0.1:{server.server_port}"
    with TokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        flow = ConsentFlow(
            store,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uri=f"{scheme}://127.0.0.1:{server.server_port}/auth/gmail/callback",
            secret=CONSENT_SECRET,
            auth_uri=endpoint.auth_uri,
            token_uri=endpoint.token_uri,
        )
        app.append(example().build_app(flow))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield Service(url, flow)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.fixture
def service(dsn: str, endpoint: FakeTokenEndpoint) -> Iterator[Service]:
    with served(dsn, endpoint) as running:
        yield running


@pytest.fixture
def owner(endpoint: FakeTokenEndpoint) -> FakeAccount:
    return endpoint.add_account("flask-owner@gmail.com")


def dead_grant(seed: SeedRow, endpoint: FakeTokenEndpoint, account: FakeAccount) -> Seeded:
    row = seed(
        expires_in=-60,
        email=account.email,
        metadata=Jsonb({"email": account.email, "google_account_id": account.sub}),
    )
    endpoint.revoke(row.refresh_token)
    return row


def to_google(session: requests.Session, link: str) -> str:
    """Follow a reconnect link as far as Google's consent page: its URL."""
    answer = session.get(link, allow_redirects=False, timeout=30)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert isinstance(location, str)
    return location


def test_the_flask_example_reconnects_a_dead_grant(
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    row = dead_grant(seed, endpoint, owner)
    browser = requests.Session()
    answer = browser.get(service.link(row.user_id), allow_redirects=False, timeout=30)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("gmail_consent=") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http here

    callback = endpoint.consent(answer.headers["location"], account=owner)
    page = browser.get(callback, timeout=30)

    assert page.status_code == 200 and 'data-outcome="connected"' in page.text
    assert owner.email in page.text and "gmail_consent" not in browser.cookies
    [exchange] = [r for r in endpoint.requests if r.grant_type == "authorization_code"]
    stored = fetch_row(row.user_id)
    assert stored["token_data"]["access_token"] == exchange.issued_access_token
    assert stored["token_data"]["refresh_token"] == exchange.issued_refresh_token
    assert stored["metadata"]["google_account_id"] == owner.sub
    assert "refresh_failure" not in stored["metadata"]
    secrets = {CLIENT_SECRET, CONSENT_SECRET, exchange.code_verifier or "", row.refresh_token}
    secrets |= {exchange.issued_access_token or "", exchange.issued_refresh_token or ""}
    assert leaked(page.text + callback, secrets) == []


REFUSALS = ["deny", "another-account", "gmail-send-unticked", "another-browser", "replayed"]


@pytest.mark.parametrize("refusal", REFUSALS)
def test_the_flask_example_shows_a_page_per_refusal_and_changes_nothing(
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    refusal: str,
) -> None:
    row = dead_grant(seed, endpoint, owner)
    other = endpoint.add_account("someone-else@gmail.com")
    browser = requests.Session()
    consent_page = to_google(browser, service.link(row.user_id))
    binding = browser.cookies["gmail_consent"]
    choices: dict[str, dict[str, Any]] = {
        "deny": {"decision": "deny"},
        "another-account": {"account": other},
        "gmail-send-unticked": {"scopes": ["openid", "email"]},
    }
    choice = {"account": owner, **choices.get(refusal, {})}
    callback = endpoint.consent(consent_page, **choice)
    if refusal == "replayed":
        first = browser.get(callback, timeout=30)
        assert 'data-outcome="connected"' in first.text
        assert "gmail_consent" not in browser.cookies
        browser.cookies.set("gmail_consent", binding)  # put back, as someone who copied it
    if refusal == "another-browser":
        browser = requests.Session()
    before = fetch_row(row.user_id)

    page = browser.get(callback, timeout=30)

    expected = {
        "deny": "declined",
        "another-account": "wrong-account",
        "gmail-send-unticked": "permission-missing",
    }.get(refusal, "expired")
    assert f'data-outcome="{expected}"' in page.text
    assert fetch_row(row.user_id) == before


def test_the_flask_example_refuses_an_expired_link(
    service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed()
    page = requests.get(service.link(row.user_id, valid_for=-1), allow_redirects=False, timeout=30)
    assert page.status_code == 400 and 'data-outcome="expired"' in page.text
    assert "set-cookie" not in page.headers and endpoint.requests == []


def test_the_flask_example_sets_a_secure_host_only_cookie_over_https(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed()
    with served(dsn, endpoint, scheme="https") as https:
        link = https.link(row.user_id)
        answer = requests.get("http" + link[5:], allow_redirects=False, timeout=30)  # TLS proxy
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("__Host-gmail_consent=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/" in cookie and "Domain" not in cookie


def test_the_flask_example_escapes_what_it_shows(
    service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint, owner: FakeAccount
) -> None:
    row = seed(email='<script>alert("x")</script>@example.com')  # a legacy row's address
    browser = requests.Session()
    callback = endpoint.consent(to_google(browser, service.link(row.user_id)), account=owner)

    page = browser.get(callback, timeout=30)

    assert 'data-outcome="wrong-account"' in page.text
    assert "<script" not in page.text and "&lt;script&gt;" in page.text
    assert page.headers["content-security-policy"] == "default-src 'none'"


def test_the_flask_example_asks_for_gmail_send(service: Service, seed: SeedRow) -> None:
    row = seed()
    location = to_google(requests.Session(), service.link(row.user_id))
    assert GMAIL_SEND in query_of(location)["scope"].split()
