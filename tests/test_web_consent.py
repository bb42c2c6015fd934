"""The web consent in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) follows a reconnect link to the app on a real uvicorn server, through the
fake Google's consent page and back, against a real PostgreSQL.

The browser is started once per session; each test gets an empty cookie jar. The routes are
also tried without a browser (requests) where a browser cannot send what an attacker would.
"""

from __future__ import annotations

import html
import json
import logging
import multiprocessing
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from psycopg.types.json import Jsonb
from selenium import webdriver
from selenium.webdriver.chrome.options import Options as ChromeOptions
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait
from starlette.applications import Starlette

from gmail_token_store import GMAIL_SEND, AsyncTokenStore
from gmail_token_store.consent import AsyncConsentFlow
from gmail_token_store.testing import FakeAccount, FakeTokenEndpoint
from gmail_token_store.web import create_app

from conftest import CLIENT_ID, CLIENT_SECRET, Seeded, SeedRow, utcnow
from helpers import CONSENT_SECRET, SCRIPT, Cli, leaked, query_of, wait_until
from workers import serve_credentials

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CALLBACK_PATH = "/auth/gmail/callback"
COOKIE = "gmail_consent"
FetchRow = Callable[[str], dict[str, Any]]


# --- the browser ---------------------------------------------------------------------------


def new_browser(profile: Path) -> WebDriver:
    """Headless Chromium with a fresh profile; Selenium Manager is never consulted (the
    driver's path is given), so nothing is downloaded."""
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = new_browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> WebDriver:
    """The session's browser with an empty cookie jar (every host's: the app and the fake
    Google are both on 127.0.0.1, where cookies do not tell ports apart)."""
    chromium.get("about:blank")
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return chromium


def outcome(browser: WebDriver) -> str:
    """The `data-outcome` of the app's page the browser ends on."""
    body = WebDriverWait(browser, 30).until(
        lambda driver: driver.find_element(By.CSS_SELECTOR, "body[data-outcome]")
    )
    return str(body.get_attribute("data-outcome"))


def on_consent_page(browser: WebDriver, link: str) -> None:
    """Follow a reconnect link to the fake Google's consent page."""
    browser.get(link)
    WebDriverWait(browser, 30).until(
        lambda driver: driver.find_element(By.CSS_SELECTOR, "form[action='/auth']")
    )


def choose(
    browser: WebDriver,
    *,
    account: FakeAccount,
    untick: tuple[str, ...] = (),
    decision: str = "allow",
) -> str:
    """On the consent page: the account, the boxes, Allow (or Deny); the app's outcome."""
    browser.find_element(By.CSS_SELECTOR, f"input[name=account][value='{account.email}']").click()
    for scope in untick:
        browser.find_element(By.CSS_SELECTOR, f"input[name=scope][value='{scope}']").click()
    browser.find_element(By.CSS_SELECTOR, f"button[name=decision][value={decision}]").click()
    return outcome(browser)


def consent_in(browser: WebDriver, link: str, *, account: FakeAccount, **choice: Any) -> str:
    """Link, consent page, choice: the outcome of the app's page."""
    on_consent_page(browser, link)
    return choose(browser, account=account, **choice)


# --- the app on a real server --------------------------------------------------------------


@dataclass
class Service:
    url: str
    flow: AsyncConsentFlow

    def link(self, user_id: str, **options: Any) -> str:
        return self.flow.reconnect_link(user_id, **options)


def in_fastapi(consent_app: Starlette, store: AsyncTokenStore) -> FastAPI:
    """The consent app mounted in a FastAPI service, as the README shows: a mounted app's
    lifespan does not run, so the service's own closes the store."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await store.aclose()

    service = FastAPI(lifespan=lifespan)

    @service.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    service.mount("/", consent_app)  # last: it takes every path the service does not
    return service


@contextmanager
def served(
    dsn: str, endpoint: FakeTokenEndpoint, *, scheme: str = "http", mounted: bool = False
) -> Iterator[Service]:
    """create_app on uvicorn in a thread (its own event loop), on a port bound first so that
    the redirect URI can name it. With `scheme="https"` the flow believes it is behind TLS;
    with `mounted`, the app is mounted in a FastAPI service."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    store = AsyncTokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0, http_timeout=5.0)
    flow = AsyncConsentFlow(
        store,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=f"{scheme}://127.0.0.1:{port}{CALLBACK_PATH}",
        secret=CONSENT_SECRET,
        auth_uri=endpoint.auth_uri,
        token_uri=endpoint.token_uri,
    )
    app = create_app(store, consent=flow, close_store=not mounted)
    if mounted:
        app = in_fastapi(app, store)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive())
        assert server.started, "uvicorn did not start"
        yield Service(f"http://127.0.0.1:{port}", flow)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def service(dsn: str, endpoint: FakeTokenEndpoint) -> Iterator[Service]:
    with served(dsn, endpoint) as running:
        yield running


# --- rows and replicas ---------------------------------------------------------------------


def dead_grant(seed: SeedRow, endpoint: FakeTokenEndpoint, account: FakeAccount) -> Seeded:
    """A row as a verified consent left it, whose refresh token Google has since revoked
    and whose access token has expired: the next use finds the grant dead."""
    row = seed(
        expires_in=-60,
        email=account.email,
        metadata=Jsonb(
            {
                "email": account.email,
                "google_account_id": account.sub,
                "account_verified": True,
                "consented_at": "2026-01-05T10:00:00+00:00",
                "source_file": "token.json",
            }
        ),
    )
    endpoint.revoke(row.refresh_token)
    return row


@contextmanager
def replica(dsn: str, user_id: str) -> Iterator[Callable[[], tuple[str, str]]]:
    """A service replica in another process (its own long-lived store): `ask()` has it
    call get_credentials once and says what it got."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_credentials, args=(dsn, user_id, theirs))
    process.start()

    def ask() -> tuple[str, str]:
        ours.send("get")
        assert ours.poll(60), "the replica did not answer"
        kind, value = ours.recv()
        return str(kind), str(value)

    try:
        yield ask
    finally:
        ours.send("stop")
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()


def code_exchanges(endpoint: FakeTokenEndpoint) -> list[Any]:
    return [r for r in endpoint.requests if r.grant_type == "authorization_code"]


def secrets_of(endpoint: FakeTokenEndpoint, *rows: Seeded) -> set[str]:
    """What no page, URL or log line may hold: the client secret, the signing secret, every
    token issued or stored, and the PKCE verifiers sent."""
    found = {CLIENT_SECRET, CONSENT_SECRET}
    for request in endpoint.requests:
        found |= {
            token
            for token in (
                request.issued_access_token,
                request.issued_refresh_token,
                request.issued_id_token,
                request.code_verifier,
                request.refresh_token,
            )
            if token
        }
    for row in rows:
        found |= {row.access_token, row.refresh_token}
    return found


# --- in the browser ------------------------------------------------------------------------


def test_a_dead_grant_reconnected_in_the_browser_is_served_by_a_running_replica(
    dsn: str,
    browser: WebDriver,
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    account = endpoint.add_account("reconnect@gmail.com")
    row = dead_grant(seed, endpoint, account)
    with replica(dsn, row.user_id) as ask:
        assert ask() == ("error", "ReauthRequiredError")  # the replica has seen it dead
        assert "refresh_failure" in fetch_row(row.user_id)["metadata"]

        assert consent_in(browser, service.link(row.user_id), account=account) == "connected"

        assert account.email in browser.find_element(By.TAG_NAME, "body").text
        [exchange] = code_exchanges(endpoint)
        assert exchange.account == account and exchange.code_verifier
        stored = fetch_row(row.user_id)
        assert stored["token_data"] == {
            "access_token": exchange.issued_access_token,
            "refresh_token": exchange.issued_refresh_token,
            "token_type": "Bearer",
        }
        assert stored["oauth_config"] == {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "token_uri": endpoint.token_uri,
        }
        assert stored["scopes"] == [GMAIL_SEND, "openid", "email"]
        metadata = stored["metadata"]
        consented_at = datetime.fromisoformat(metadata.pop("consented_at"))
        assert abs(consented_at - datetime.now(UTC)) < timedelta(minutes=1)
        assert metadata == {
            "email": account.email,
            "google_account_id": account.sub,
            "account_verified": True,
            "source_file": "token.json",  # keys the consent does not own are kept
        }  # and the recorded failure is gone
        assert stored["expiry"] > utcnow() + timedelta(minutes=50)
        assert stored["robeing_id"] == "robeing-1"

        # The replica reads the row again (a dead grant is never cached): no restart.
        assert ask() == ("token", exchange.issued_access_token)
    assert endpoint.refresh_requests()[-1].refresh_token == row.refresh_token  # the dead one
    assert leaked(browser.page_source + browser.current_url, secrets_of(endpoint, row)) == []


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"decision": "deny"}, "declined"),
        ({"other_account": True}, "wrong-account"),
        ({"untick": (GMAIL_SEND,)}, "permission-missing"),
    ],
    ids=["deny", "another-account", "gmail-send-unticked"],
)
def test_a_refused_consent_shows_its_page_and_changes_nothing(
    browser: WebDriver,
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    choice: dict[str, Any],
    expected: str,
) -> None:
    account = endpoint.add_account("owner@gmail.com")
    other = endpoint.add_account("someone-else@gmail.com")
    row = dead_grant(seed, endpoint, account)
    before = fetch_row(row.user_id)

    seen = consent_in(
        browser,
        service.link(row.user_id),
        account=other if choice.get("other_account") else account,
        untick=choice.get("untick", ()),
        decision=choice.get("decision", "allow"),
    )

    assert seen == expected
    assert fetch_row(row.user_id) == before
    page = browser.page_source
    if expected == "wrong-account":
        assert account.email in page  # who must sign in
    # A fresh start is offered: a new reconnect link for the same user.
    again = browser.find_element(By.CSS_SELECTOR, "a.button").get_attribute("href") or ""
    assert query_of(again)["user_id"] == row.user_id
    assert leaked(page + browser.current_url, secrets_of(endpoint, row)) == []


def test_an_expired_link_shows_the_expired_page_and_never_reaches_google(
    browser: WebDriver,
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    account = endpoint.add_account("late@gmail.com")
    row = dead_grant(seed, endpoint, account)
    before = fetch_row(row.user_id)

    browser.get(service.link(row.user_id, valid_for=-1))

    assert outcome(browser) == "expired"
    assert browser.current_url.startswith(service.url)  # not sent on to the consent page
    assert browser.get_cookies() == []
    assert fetch_row(row.user_id) == before and endpoint.requests == []


def test_a_replayed_callback_shows_the_expired_page_and_changes_nothing(
    browser: WebDriver,
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    account = endpoint.add_account("twice@gmail.com")
    row = dead_grant(seed, endpoint, account)
    on_consent_page(browser, service.link(row.user_id))
    binding = browser.get_cookie(COOKIE)
    assert binding is not None
    assert choose(browser, account=account) == "connected"
    callback = browser.current_url
    assert callback.startswith(service.url + CALLBACK_PATH) and "code=" in callback
    after = fetch_row(row.user_id)

    # Again, as a reload or the history would: the cookie went with the first answer.
    browser.get(callback)
    assert outcome(browser) == "expired"
    # Again with the cookie put back (as someone who copied it would): the state was used.
    browser.add_cookie({"name": COOKIE, "value": binding["value"], "path": "/"})
    browser.get(callback)
    assert outcome(browser) == "expired"

    assert fetch_row(row.user_id) == after
    assert len(code_exchanges(endpoint)) == 1  # neither replay reached Google


def test_a_callback_in_another_browser_shows_the_expired_page_and_changes_nothing(
    browser: WebDriver,
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    tmp_path: Path,
) -> None:
    account = endpoint.add_account("elsewhere@gmail.com")
    row = dead_grant(seed, endpoint, account)
    before = fetch_row(row.user_id)
    on_consent_page(browser, service.link(row.user_id))  # the binding cookie is set here
    # The redirect Google would send this browser back with, read from the fake.
    callback = endpoint.consent(browser.current_url, account=account)

    other = new_browser(tmp_path / "another-profile")
    try:
        other.get(callback)
        assert outcome(other) == "expired"
    finally:
        other.quit()
    assert fetch_row(row.user_id) == before and code_exchanges(endpoint) == []

    # Refused before anything was used up: the browser that started it can still finish.
    browser.get(callback)
    assert outcome(browser) == "connected"
    [exchange] = code_exchanges(endpoint)
    assert fetch_row(row.user_id)["token_data"]["access_token"] == exchange.issued_access_token


def test_the_binding_cookie_is_httponly_samesite_lax_and_gone_after_the_callback(
    browser: WebDriver, service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    account = endpoint.add_account("cookie@gmail.com")
    row = dead_grant(seed, endpoint, account)
    on_consent_page(browser, service.link(row.user_id))

    cookie = browser.get_cookie(COOKIE)

    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # served over http here: see the https test below
    assert cookie["path"] == "/" and cookie.get("domain") in (None, "127.0.0.1")  # host-only
    assert cookie["value"] not in browser.current_url  # only its hash is in the state
    assert browser.execute_script("return document.cookie") == ""  # no script can read it
    browser.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
    assert outcome(browser) == "connected"
    assert browser.get_cookie(COOKIE) is None


def test_mounted_in_fastapi_the_consent_routes_work_next_to_the_services_own(
    dsn: str, endpoint: FakeTokenEndpoint, seed: SeedRow, fetch_row: FetchRow
) -> None:
    account = endpoint.add_account("mounted@gmail.com")
    row = dead_grant(seed, endpoint, account)
    with served(dsn, endpoint, mounted=True) as mounted:
        assert requests.get(mounted.url + "/health", timeout=30).json() == {"ok": True}
        browser = requests.Session()
        start = browser.get(mounted.link(row.user_id), allow_redirects=False, timeout=30)
        callback = endpoint.consent(start.headers["location"], account=account)
        page = browser.get(callback, timeout=30)
    assert 'data-outcome="connected"' in page.text
    [exchange] = code_exchanges(endpoint)
    assert fetch_row(row.user_id)["token_data"]["access_token"] == exchange.issued_access_token


# --- without a browser: what an attacker would send ----------------------------------------


def test_over_https_the_binding_cookie_is_secure_and_host_only(
    dsn: str, endpoint: FakeTokenEndpoint, seed: SeedRow
) -> None:
    row = seed()
    with served(dsn, endpoint, scheme="https") as https:
        # In front of the app, a TLS proxy would take the https link; here plain http does.
        link = https.link(row.user_id)
        assert link.startswith("https://")
        answer = requests.get("http" + link[5:], allow_redirects=False, timeout=30)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert cookie.startswith("__Host-gmail_consent=")
    assert {"httponly", "secure", "path", "samesite", "max-age"} <= attributes
    assert "domain" not in attributes and "samesite=lax" in cookie.lower()


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """What the library logged (uvicorn's access log is the server's: see test_serve)."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("gmail_token_store")
    )


def test_no_secret_reaches_a_url_a_page_or_a_log_line(
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account = endpoint.add_account("quiet@gmail.com")
    row = seed(email=account.email)
    session = requests.Session()
    start = session.get(service.link(row.user_id), allow_redirects=False, timeout=30)
    callback = endpoint.consent(start.headers["location"], account=account)
    page = session.get(callback, timeout=30)
    assert page.status_code == 200 and 'data-outcome="connected"' in page.text

    secrets = secrets_of(endpoint, row) | {start.cookies[COOKIE]}  # the binding too
    assert leaked(start.headers["location"] + callback, secrets) == []
    assert leaked(page.text, secrets) == []
    callback_values = {query_of(callback)[key] for key in ("code", "state")}
    link_signature = query_of(service.link(row.user_id))["sig"]
    assert "saved the Gmail grant" in logged(caplog)
    assert leaked(logged(caplog), secrets | callback_values | {link_signature}) == []


HOSTILE_LINKS: dict[str, Callable[[str], str]] = {
    "non-ascii-signature": lambda link: link[:-2] + "%C3%A9",
    "invalid-utf8-signature": lambda link: link[:-2] + "%FF%FE",
    "account-change-added": lambda link: link + "&change=1",
    "user-id-repeated": lambda link: link + f"&user_id={uuid.uuid4()}",
    "nothing": lambda link: link.split("?")[0],
    "huge-user-id": lambda link: link.replace("user_id=", "user_id=" + "a" * 5000),
}


@pytest.mark.parametrize("tampering", HOSTILE_LINKS, ids=list(HOSTILE_LINKS))
def test_a_hostile_link_gets_the_expired_page_never_a_server_error(
    service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint, tampering: str
) -> None:
    row = seed()
    answer = requests.get(
        HOSTILE_LINKS[tampering](service.link(row.user_id)), allow_redirects=False, timeout=30
    )
    assert answer.status_code == 400 and 'data-outcome="expired"' in answer.text
    assert "set-cookie" not in answer.headers and endpoint.requests == []


HOSTILE_CALLBACKS: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {
    "non-ascii-state-signature": lambda q: {**q, "state": q["state"][:-1] + "\u00e9"},
    "state-without-signature": lambda q: {**q, "state": q["state"].partition(".")[0]},
    "huge-state": lambda q: {**q, "state": q["state"] * 50},
    "no-state": lambda q: {key: value for key, value in q.items() if key != "state"},
    "nothing": lambda _q: {},
}


@pytest.mark.parametrize("tampering", HOSTILE_CALLBACKS, ids=list(HOSTILE_CALLBACKS))
def test_a_hostile_callback_gets_the_expired_page_never_a_server_error(
    service: Service,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    tampering: str,
) -> None:
    account = endpoint.add_account("target@gmail.com")
    row = dead_grant(seed, endpoint, account)
    before = fetch_row(row.user_id)
    session = requests.Session()  # the browser that started it, cookie and all
    start = session.get(service.link(row.user_id), allow_redirects=False, timeout=30)
    callback = query_of(endpoint.consent(start.headers["location"], account=account))

    answer = session.get(
        service.url + CALLBACK_PATH, params=HOSTILE_CALLBACKS[tampering](callback), timeout=30
    )

    assert answer.status_code == 400 and 'data-outcome="expired"' in answer.text
    assert fetch_row(row.user_id) == before and code_exchanges(endpoint) == []


def retry_link(page: requests.Response) -> str | None:
    """The fresh start a page offers, if any."""
    found = re.search(r'<a class="button" href="([^"]+)"', page.text)
    return html.unescape(found.group(1)) if found else None


def test_a_fresh_start_offered_on_a_page_never_outlives_the_link_it_came_from(
    service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    account = endpoint.add_account("renewer@gmail.com")
    row = dead_grant(seed, endpoint, account)

    def declined(link: str, *, after: float = 0.0) -> requests.Response:
        browser = requests.Session()
        start = browser.get(link, allow_redirects=False, timeout=30)
        callback = endpoint.consent(start.headers["location"], account=account, decision="deny")
        wait_until(lambda: time.time() >= after, timeout=10)
        page = browser.get(callback, timeout=30)
        assert 'data-outcome="declined"' in page.text
        return page

    link = service.link(row.user_id, valid_for=120)
    again = retry_link(declined(link))
    assert again is not None and query_of(again)["user_id"] == row.user_id
    assert int(query_of(again)["expires"]) <= int(query_of(link)["expires"])

    # Declining again and again cannot keep a link alive past its end: once it is over,
    # a page offers no fresh start.
    short = service.link(row.user_id, valid_for=1)
    assert retry_link(declined(short, after=int(query_of(short)["expires"]) + 1)) is None


MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.mark.parametrize("where", ["row-email", "google-email", "callback-error"])
def test_text_from_the_database_google_or_the_browser_is_escaped_on_the_page(
    service: Service, seed: SeedRow, endpoint: FakeTokenEndpoint, where: str
) -> None:
    google_email = (MARKUP if where == "google-email" else "plain") + "@gmail.com"
    account = endpoint.add_account(google_email)
    if where == "row-email":  # a legacy row naming another address: the wrong-account page
        row = seed(email=MARKUP + "@example.com")
    else:
        row = seed(email=None, metadata=Jsonb({}))
    session = requests.Session()
    start = session.get(service.link(row.user_id), allow_redirects=False, timeout=30)
    params = query_of(endpoint.consent(start.headers["location"], account=account))
    if where == "callback-error":
        params = {"state": params["state"], "error": MARKUP}

    page = session.get(service.url + CALLBACK_PATH, params=params, timeout=30)

    expected = {"row-email": "wrong-account", "google-email": "connected"}.get(where, "failed")
    assert f'data-outcome="{expected}"' in page.text
    assert "<script" not in page.text and "<img" not in page.text
    assert "&lt;script&gt;" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none'


# --- the serve command ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_runs_the_consent_and_logs_no_link_signature_code_or_state(
    cli: Cli,
    endpoint: FakeTokenEndpoint,
    seed: SeedRow,
    fetch_row: FetchRow,
    tmp_path: Path,
) -> None:
    account = endpoint.add_account("served@gmail.com")
    row = dead_grant(seed, endpoint, account)
    cli.secrets |= {row.access_token, row.refresh_token, CONSENT_SECRET}
    secrets_file = tmp_path / "web_client.json"
    client = endpoint.client_config(CLIENT_ID, CLIENT_SECRET)["installed"]
    secrets_file.write_text(json.dumps({"web": client}))
    public_url = f"http://127.0.0.1:{free_port()}"
    env = {**cli.env(), "GMAIL_TOKEN_STORE_SECRET": CONSENT_SECRET}
    assert SCRIPT is not None
    link = subprocess.run(
        [SCRIPT, "reconnect-link", row.user_id, "--public-url", public_url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    command = [SCRIPT, "serve", "--client-secrets", str(secrets_file), "--public-url", public_url]
    server = subprocess.Popen(
        [*command, "--port", public_url.rsplit(":", 1)[1]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        session = requests.Session()

        def listening() -> bool:
            assert server.poll() is None, "serve exited"
            try:
                requests.get(public_url, timeout=1)
            except requests.ConnectionError:
                return False
            return True

        wait_until(listening, timeout=30)
        start = session.get(link, allow_redirects=False, timeout=30)
        callback = endpoint.consent(start.headers["location"], account=account)
        page = session.get(callback, timeout=30)
        assert 'data-outcome="connected"' in page.text
    finally:
        server.terminate()  # a graceful shutdown: the app closes its store
        log, _ = server.communicate(timeout=30)
        cli.outputs.append(log)
    assert server.returncode in (0, -15), log
    [exchange] = code_exchanges(endpoint)
    assert fetch_row(row.user_id)["token_data"]["access_token"] == exchange.issued_access_token

    # The access log (gmail_token_store.access): route templates only, never a query.
    assert "GET /auth/gmail/passport 303 key=-" in log, log
    assert "GET /auth/gmail/callback 200 key=-" in log
    in_urls = {query_of(link)["sig"], *(query_of(callback)[key] for key in ("code", "state"))}
    assert leaked(log, in_urls | {start.cookies[COOKIE]} | secrets_of(endpoint, row)) == []
