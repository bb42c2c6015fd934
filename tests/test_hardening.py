"""Hardening: what a tampered row, a hostile endpoint or a bad input could make the store do.

Each test reproduces a finding of the security review of 0.2.0 (and failed there): a
loopback token URI collecting the fallback client, timestamps out of range stopping every
listing, a 150 MB column fetched whole, a dripping endpoint holding the row lock past the
budget, secrets in exception chains and reprs, free text in event fields, `import` of a
device or a FIFO, more scopes written than a read accepts.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

import gmail_token_store
from gmail_token_store import (
    EventError,
    InvalidTokenRecordError,
    RefreshFailedError,
    TokenEvent,
    TokenStore,
    TokenStoreError,
)
from gmail_token_store.testing import FakeTokenEndpoint, PostgresServer

from conftest import CLIENT_ID, CLIENT_SECRET, Seeded, SeedRow
from helpers import DSN_PASSWORD, Cli, one_line

FetchRow = Callable[[str], dict[str, Any]]


# --- a tampered token URI ------------------------------------------------------------------


class Listener:
    """A loopback TCP port that records whatever is sent to it (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            # A request may come in several writes (headers, then the form): keep reading
            # until the client gives up (it gets no answer) or 2 s pass.
            received = b""
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    received += chunk
            self.received.append(received)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    sidecar = Listener()
    yield sidecar
    sidecar.close()


def test_a_tampered_row_sends_nothing_to_a_loopback_port_unless_the_store_opted_in(
    make_store: Callable[..., TokenStore], seed: SeedRow, listener: Listener
) -> None:
    # A row without a client of its own, pointed by another service at a local port: it
    # would get the store's fallback client and the refresh token.
    row = seed(
        expires_in=-10, oauth_config=Jsonb({"token_uri": f"http://127.0.0.1:{listener.port}/t"})
    )
    fallback = {"client_id": "fallback-id", "client_secret": "fallback-secret-" + "F" * 12}
    store = make_store(allow_loopback_token_uri=False, **fallback)
    with pytest.raises(InvalidTokenRecordError, match="loopback") as caught:
        store.get_credentials(row.user_id)
    assert "allow_loopback_token_uri" in str(caught.value)
    assert store.check(row.user_id).state == "broken"
    with pytest.raises(InvalidTokenRecordError):
        store.refresh(row.user_id, force=True)
    time.sleep(0.2)
    assert listener.received == []

    trusting = make_store(allow_loopback_token_uri=True, http_timeout=0.5, **fallback)
    with pytest.raises(TokenStoreError):
        trusting.get_credentials(row.user_id)  # the listener never answers
    assert any(b"fallback-secret-" in request for request in listener.received)


def test_from_env_trusts_loopback_only_with_the_environment_opt_in(
    monkeypatch: pytest.MonkeyPatch, dsn: str, seed: SeedRow
) -> None:
    row = seed()
    monkeypatch.setenv("GMAIL_TOKEN_STORE_DSN", dsn)
    monkeypatch.delenv("GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI")
    with TokenStore.from_env(cache_ttl=0) as store, pytest.raises(InvalidTokenRecordError):
        store.get_credentials(row.user_id)
    monkeypatch.setenv("GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI", "1")
    with TokenStore.from_env(cache_ttl=0) as store:
        assert store.get_credentials(row.user_id).token == row.access_token
    monkeypatch.setenv("GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI", "yes")
    with pytest.raises(TokenStoreError, match="must be 1 or 0"):
        TokenStore.from_env()


# --- timestamps out of range ---------------------------------------------------------------

HOSTILE_TIMESTAMPS = {
    "updated_at infinity": "UPDATE gmail_token SET updated_at = 'infinity' WHERE user_id = %s",
    "updated_at in year 20000": (
        "UPDATE gmail_token SET updated_at = '20000-01-01' WHERE user_id = %s"
    ),
    "expiry infinity": "UPDATE gmail_token SET expiry = 'infinity' WHERE user_id = %s",
    "expiry -infinity": "UPDATE gmail_token SET expiry = '-infinity' WHERE user_id = %s",
    "expiry in year 20000": "UPDATE gmail_token SET expiry = '20000-01-01' WHERE user_id = %s",
    "token.json expiry past 9999 in UTC": (
        "UPDATE gmail_token SET expiry = NULL, token_data = token_data"
        ' || \'{"expiry": "9999-12-31T23:30:00-01:00"}\' WHERE user_id = %s'
    ),
}


@pytest.fixture(params=list(HOSTILE_TIMESTAMPS))
def out_of_range(request: pytest.FixtureRequest, dsn: str, seed: SeedRow) -> tuple[str, Seeded]:
    """A row whose timestamp cannot be a datetime, among good rows."""
    row = seed(expires_in=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HOSTILE_TIMESTAMPS[request.param], (row.user_id,))
    return request.param, row


def test_a_timestamp_out_of_range_breaks_its_row_only_in_every_library_call(
    make_store: Callable[..., TokenStore], seed: SeedRow, out_of_range: tuple[str, Seeded]
) -> None:
    name, hostile = out_of_range
    fresh, due = seed(expires_in=3000), seed(expires_in=30)
    store = make_store()
    for call in (store.get_credentials, store.refresh):
        with pytest.raises(InvalidTokenRecordError, match="out of range"):
            call(hostile.user_id)
    status = store.check(hostile.user_id)
    assert status.state == "broken" and status.problem and "out of range" in status.problem, name
    states = {status.user_id: status.state for status in store.check_all()}
    assert states == {hostile.user_id: "broken", fresh.user_id: "ok", due.user_id: "refresh-due"}
    report = store.refresh_all()
    assert report.refreshed == 1
    assert [who.split()[0] for who, _ in report.failed] == [hostile.user_id]
    assert store.get_credentials(fresh.user_id).token == fresh.access_token


def test_a_timestamp_out_of_range_breaks_its_row_only_in_every_command(
    cli: Cli, seed: SeedRow, out_of_range: tuple[str, Seeded]
) -> None:
    _, hostile = out_of_range
    good = seed(expires_in=3000)
    runs = {
        "check": cli("check", hostile.user_id),
        "list": cli("list"),
        "list --json": cli("list", "--json"),
        "list --needs-attention": cli("list", "--needs-attention"),
        "metrics": cli("metrics"),
        "refresh-all": cli("refresh-all"),
    }
    for name, result in runs.items():
        assert "Traceback" not in result.stderr and "Error" not in result.stderr, name
    assert runs["check"].returncode == 0 and '"state": "broken"' in runs["check"].stdout
    assert runs["list"].returncode == 0 and good.user_id in runs["list"].stdout
    listed = {entry["user_id"]: entry["state"] for entry in json.loads(runs["list --json"].stdout)}
    assert listed == {hostile.user_id: "broken", good.user_id: "ok"}
    assert runs["list --needs-attention"].returncode == 1
    assert 'gmail_token_grants{state="broken"} 1' in runs["metrics"].stdout
    assert 'gmail_token_grants{state="ok"} 1' in runs["metrics"].stdout
    assert runs["refresh-all"].returncode == 1 and hostile.user_id in runs["refresh-all"].stdout


# --- an oversized column -------------------------------------------------------------------

_MEMORY_SCRIPT = """
import json, resource, sys
from gmail_token_store import TokenStore, TokenStoreError
dsn, hostile, good = sys.argv[1:4]
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with TokenStore(dsn, cache_ttl=0, allow_loopback_token_uri=True) as store:
    store.get_credentials(good)
    store.check_all()
    before = peak_mb()
    for _ in range(2):
        states = {s.user_id: s.state for s in store.check_all()}
        try:
            store.get_credentials(hostile)
        except TokenStoreError as exc:
            error = type(exc).__name__
        store.check(hostile)
    print(json.dumps({"growth": peak_mb() - before, "states": states, "error": error}))
"""


def test_a_150_mb_column_is_never_fetched_whole(dsn: str, seed: SeedRow) -> None:
    hostile, good = seed(), seed()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET metadata = jsonb_build_object('email', 'big@gmail.com',"
            " 'blob', repeat('x', 150 * 1024 * 1024)) WHERE user_id = %s",
            (hostile.user_id,),
        )
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, dsn, hostile.user_id, good.user_id],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(result.stdout)
    assert measured["states"] == {hostile.user_id: "broken", good.user_id: "ok"}
    assert measured["error"] == "InvalidTokenRecordError"
    assert measured["growth"] < 30, measured  # 0.2.0 grew by 450 MB here


# --- a dripping token endpoint -------------------------------------------------------------


class DrippingEndpoint:
    """Accepts a request, then sends a well-formed answer one byte every half second."""

    ANSWER = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
        + b'{"access_token": "ya29.d", "x": "1234"}\n'
    )

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.token_uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            for index in range(len(self.ANSWER)):
                conn.send(self.ANSWER[index : index + 1])
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_dripping_endpoint_ends_within_the_budget_and_frees_the_row_lock(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    dripping = DrippingEndpoint()
    try:
        row = seed(
            expires_in=-10,
            oauth_config=Jsonb(
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_uri": dripping.token_uri,
                }
            ),
        )
        store = make_store(http_timeout=2.0)  # a whole refresh: 3 x 2 s
        began = time.monotonic()
        with pytest.raises(RefreshFailedError) as caught:
            store.get_credentials(row.user_id)
        took = time.monotonic() - began
        assert 5.0 < took < 7.0, took  # 0.2.0's sync store: 24 s, the lock held throughout
        assert caught.value.cause == "timeout" and dripping.requests >= 2
        with psycopg.connect(dsn) as conn:  # the row lock is free at once
            conn.execute(
                "SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE NOWAIT", (row.user_id,)
            )
    finally:
        dripping.close()


# --- text PostgreSQL refuses, and secrets in chains ----------------------------------------


class AnsweringEndpoint:
    """A token endpoint that answers every request with one JSON body, and remembers it."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.token_uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}/token"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )

    def close(self) -> None:
        self.sock.close()


NUL_TOKEN = "1//nul-refresh-" + "N" * 12 + "\x00tail"
SURROGATE_TOKEN = "1//surrogate-refresh-" + "S" * 12 + "\ud800"


def traceback_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


@pytest.mark.parametrize("bad", [NUL_TOKEN, SURROGATE_TOKEN], ids=["NUL", "lone surrogate"])
def test_text_postgresql_refuses_is_refused_before_any_write_and_never_quoted(
    make_store: Callable[..., TokenStore], seed: SeedRow, fetch_row: FetchRow, bad: str
) -> None:
    store = make_store()
    row = seed()
    before = fetch_row(row.user_id)
    attempts: list[Callable[[], object]] = [
        lambda: store.save(row.user_id, Credentials("ya29.n", refresh_token=bad)),
        lambda: store.save(row.user_id, Credentials(bad, refresh_token="1//ok")),
        lambda: store.save(
            row.user_id, Credentials("ya29.n", refresh_token="1//ok"), metadata={"note": bad}
        ),
        lambda: store.save(row.user_id, Credentials("ya29.n", refresh_token="1//ok"), email=bad),
        lambda: store.save(
            row.user_id,
            Credentials("ya29.n", refresh_token="1//ok", client_id="c", client_secret=bad),
        ),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match=r"cannot (be )?store") as caught:
            attempt()
        text = traceback_text(caught.value)
        assert bad not in text and bad[:20] not in text and "psycopg" not in text
    assert fetch_row(row.user_id) == before  # nothing was written


def test_an_answer_with_a_token_postgresql_refuses_changes_nothing(
    make_store: Callable[..., TokenStore], seed: SeedRow, fetch_row: FetchRow
) -> None:
    bad_answer = AnsweringEndpoint({"access_token": "ya29.answer-" + "A" * 20 + "\x00"})
    try:
        row = seed(
            expires_in=-10,
            oauth_config=Jsonb(
                {
                    "client_id": "c",
                    "client_secret": CLIENT_SECRET,
                    "token_uri": bad_answer.token_uri,
                }
            ),
        )
        before = fetch_row(row.user_id)
        with pytest.raises(RefreshFailedError, match="cannot be stored") as caught:
            make_store().get_credentials(row.user_id)
        assert not caught.value.retryable and caught.value.cause == "bad_answer"
        assert "ya29.answer-" not in traceback_text(caught.value)
        assert fetch_row(row.user_id) == before
    finally:
        bad_answer.close()


def test_no_error_the_library_raises_carries_a_secret_in_its_traceback(
    postgres: PostgresServer,
    dsn: str,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    """Every error of a scenario that plants secrets everywhere, with causes and contexts."""
    store = make_store(client_id="fallback-id", client_secret=CLIENT_SECRET)
    rows = [seed(expires_in=-10) for _ in range(3)]
    errors: list[BaseException] = []

    def expect(call: Callable[[], object]) -> None:
        try:
            call()
        except (TokenStoreError, ValueError) as exc:
            errors.append(exc)
        else:
            raise AssertionError("the call was expected to fail")

    endpoint.revoke(rows[0].refresh_token)
    expect(lambda: store.get_credentials(rows[0].user_id))  # a dead grant
    endpoint.default = gmail_token_store.testing.Reply.INVALID_CLIENT
    expect(lambda: store.get_credentials(rows[1].user_id))
    endpoint.default = gmail_token_store.testing.Reply.SERVER_ERROR
    expect(lambda: store.refresh(rows[2].user_id, force=True))

    def save(refresh_token: str) -> Callable[[], object]:
        return lambda: store.save(rows[2].user_id, Credentials("t", refresh_token=refresh_token))

    for bad in (NUL_TOKEN, SURROGATE_TOKEN):
        expect(save(bad))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE gmail_token RENAME TO gmail_token_moved")
        try:
            expect(lambda: store.get_credentials(rows[2].user_id))
            expect(lambda: store.save(rows[2].user_id, Credentials("t", refresh_token="1//x")))
        finally:
            conn.execute("ALTER TABLE gmail_token_moved RENAME TO gmail_token")
    refused = f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:{postgres.port}/test"
    expect(lambda: make_store(conninfo=refused).get_credentials(rows[2].user_id))
    expect(lambda: make_store(conninfo=f"{refused} port=nope").check(rows[2].user_id))

    secrets = {CLIENT_SECRET, DSN_PASSWORD, postgres.password, NUL_TOKEN, SURROGATE_TOKEN}
    for row in rows:
        secrets |= {row.access_token, row.refresh_token}
    assert len(errors) == 9
    for error in errors:
        text = traceback_text(error)
        leaked = [secret for secret in secrets if secret in text or secret[:20] in text]
        assert leaked == [], (type(error).__name__, text)
        chain: BaseException | None = error
        while chain is not None:  # no driver exception is part of it either
            module = type(chain).__module__.split(".")[0]
            assert module not in ("psycopg", "httpx", "json"), (type(error), text)
            chain = chain.__cause__ or chain.__context__


# --- reprs ---------------------------------------------------------------------------------


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from `root` through our own objects and containers
    (third-party objects are reached, and their repr checked, but not entered)."""
    seen: set[int] = set()
    pending = [root]
    while pending:
        item = pending.pop()
        if id(item) in seen or isinstance(item, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict | weakref.WeakKeyDictionary | weakref.WeakValueDictionary):
            pending.extend(list(item.keys()) + list(item.values()))
        elif isinstance(item, list | tuple | set | frozenset | collections.deque):
            pending.extend(item)
        elif type(item).__module__.startswith("gmail_token_store"):
            pending.extend(getattr(item, "__dict__", {}).values())
            for cls in type(item).__mro__:
                slots = cls.__dict__.get("__slots__", ())
                for slot in (slots,) if isinstance(slots, str) else slots:
                    if hasattr(item, slot):
                        pending.append(getattr(item, slot))


def test_no_object_reachable_from_a_store_shows_a_secret_in_its_repr(
    postgres: PostgresServer,
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    endpoint.rotate_refresh_tokens = True
    store = make_store(cache_ttl=60, client_id="fallback-id", client_secret=CLIENT_SECRET)
    rows = [seed(expires_in=e) for e in (3000, 10)]
    for row in rows:
        store.get_credentials(row.user_id)  # the cache, kept grants, the pool, HTTP client
    store.refresh(rows[0].user_id, force=True)
    secrets = {CLIENT_SECRET, postgres.password}
    for row in rows:
        secrets |= {row.access_token, row.refresh_token}
    for request in endpoint.requests:
        secrets |= {t for t in (request.issued_access_token, request.issued_refresh_token) if t}
    gc.collect()
    checked = 0
    for item in reachable(getattr(store, "store", store)):  # (an AsyncFacade's store)
        text = repr(item)
        checked += 1
        assert not [s for s in secrets if s in text], (type(item), text[:300])
    assert checked > 30


# --- events --------------------------------------------------------------------------------


def test_event_errors_come_from_a_fixed_set_and_the_words_go_to_the_message(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    events: list[TokenEvent] = []
    store = make_store(on_event=events.append, mandatory_refresh_margin=30)
    row = seed(expires_in=20)  # in the mandatory window: a failed refresh serves it stale
    endpoint.default = gmail_token_store.testing.Reply.SERVER_ERROR
    assert store.get_credentials(row.user_id).token == row.access_token
    dead = seed(expires_in=-5)
    endpoint.default = gmail_token_store.testing.Reply.OK
    endpoint.revoke(dead.refresh_token)
    with pytest.raises(TokenStoreError):
        store.get_credentials(dead.user_id)
    kinds = {event.kind: event for event in events}
    assert {"served_stale", "refresh_failed", "reauth_required"} <= set(kinds)
    allowed = set(EventError.__args__)  # type: ignore[attr-defined]
    for event in events:
        assert event.error in allowed, event
    stale = kinds["served_stale"]
    assert stale.error == "server_error" and "HTTP 500" in stale.message


# --- import and scopes ---------------------------------------------------------------------


def test_import_accepts_only_a_regular_file_of_at_most_one_mib(
    cli: Cli, tmp_path: Path, fetch_row: FetchRow, seed: SeedRow
) -> None:
    row = seed()
    before = fetch_row(row.user_id)
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"refresh_token": "1//r", "padding": "x" * (1024 * 1024)}))
    for path, expected in (
        ("/dev/zero", "not a regular file"),
        (str(fifo), "not a regular file"),
        (str(tmp_path), "not a regular file"),
        (str(big), "bigger than 1,048,576 bytes"),
    ):
        began = time.monotonic()
        result = cli("import", path, "--user-id", row.user_id)
        assert time.monotonic() - began < 20
        assert result.returncode == 1 and expected in one_line(result.stderr), (path, result)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert fetch_row(row.user_id) == before


def test_scopes_an_answer_lists_beyond_what_a_read_accepts_are_not_written(
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
) -> None:
    store = make_store()
    row = seed(expires_in=-10)
    endpoint.granted_scopes = [f"https://www.googleapis.com/auth/s{i}" for i in range(1001)]
    refreshed = store.get_credentials(row.user_id)
    assert refreshed.token != row.access_token
    assert fetch_row(row.user_id)["scopes"] == ["https://www.googleapis.com/auth/gmail.send"]
    assert store.check(row.user_id).state == "ok"  # 0.2.0: broken for good
    endpoint.granted_scopes = ["https://www.googleapis.com/auth/gmail.send", "openid"]
    store.refresh(row.user_id, force=True)
    assert fetch_row(row.user_id)["scopes"] == endpoint.granted_scopes
