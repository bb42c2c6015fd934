"""auth-server's API and Google's security events, served by `gmail-token-store serve`: a
real uvicorn in a subprocess, a real HTTP client, the fake Google over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import uvicorn
from psycopg.types.json import Jsonb
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gmail_token_store._cli import serve
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    PostgresServer,
    RiscEvent,
    iss_sub,
    oauth_token,
)
from gmail_token_store.testing._risc_issuer import TokenIdentifierAlg

from conftest import CLIENT_ID, SeedRow
from helpers import AUTH_SERVER_CHECK_KEYS, AUTH_SERVER_REFRESH_KEYS, SCRIPT, wait_until

FULL_KEY = "full-api-key-" + "F" * 24
CHECK_KEY = "check-only-key-" + "C" * 24


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`gmail-token-store serve` in a subprocess, its log in a file."""

    def __init__(self, dsn: str, endpoint: FakeTokenEndpoint, log: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "GMAIL_TOKEN_STORE_DSN": dsn,
            "GMAIL_TOKEN_STORE_API_KEYS": f"worker={FULL_KEY},dashboard={CHECK_KEY}:check",
            "GMAIL_TOKEN_STORE_RISC_CONFIG_URL": endpoint.risc_config_url,
        }
        assert SCRIPT is not None
        with log.open("wb") as out:
            command = [SCRIPT, "serve", "--port", str(self.port), "--risc"]
            self.process = subprocess.Popen(
                [*command, "--risc-client-id", CLIENT_ID, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=30)

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture
def server(dsn: str, endpoint: FakeTokenEndpoint, tmp_path: Path) -> Iterator[Server]:
    running = Server(dsn, endpoint, tmp_path / "server.log")
    yield running
    running.stop()


def api(server: Server, method: str, path: str, key: str | None = FULL_KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, server.url + path, headers=headers, timeout=30)


def test_check_and_refresh_answer_auth_servers_shapes(
    server: Server, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    fresh, due = seed(expires_in=3000), seed(expires_in=60)
    check = api(server, "GET", f"/api/gmail/check/{fresh.user_id}")
    assert check.status_code == 200 and set(check.json()) == AUTH_SERVER_CHECK_KEYS
    assert check.json()["status"] == "found" and check.json()["needs_refresh"] is False
    valid = api(server, "POST", f"/api/gmail/refresh/{fresh.user_id}")
    assert valid.status_code == 200 and set(valid.json()) == AUTH_SERVER_REFRESH_KEYS
    assert valid.json()["status"] == "valid" and valid.json()["access_token"] == fresh.access_token
    refreshed = api(server, "POST", f"/api/gmail/refresh/{due.user_id}")
    assert refreshed.json()["status"] == "refreshed"
    assert refreshed.json()["access_token"] == endpoint.refresh_requests()[-1].issued_access_token
    assert refreshed.json()["expires_in"] > 3000


def test_every_api_route_needs_a_key_and_a_check_key_only_checks(
    server: Server, seed: SeedRow
) -> None:
    known = seed().user_id
    unknown = "dddddddd-dddd-dddd-dddd-dddddddddddd"
    for method, route in (("GET", "/api/gmail/check/"), ("POST", "/api/gmail/refresh/")):
        answers = [
            api(server, method, route + user, key)
            for user in (known, unknown, "not-a-uuid")
            for key in (None, "wrong-key-" + "W" * 30, "Bearer")
        ]
        assert {a.status_code for a in answers} == {401}
        assert len({a.text for a in answers}) == 1  # the same answer: no oracle
    assert api(server, "GET", f"/api/gmail/check/{known}", CHECK_KEY).status_code == 200
    forbidden = api(server, "POST", f"/api/gmail/refresh/{known}", CHECK_KEY)
    assert forbidden.status_code == 403 and "access_token" not in forbidden.text
    assert api(server, "GET", f"/api/gmail/check/{unknown}").status_code == 404


def test_errors_say_who_must_act(
    server: Server, seed: SeedRow, endpoint: FakeTokenEndpoint, dsn: str
) -> None:
    dead = seed(expires_in=-10)
    endpoint.revoke(dead.refresh_token)
    consent = api(server, "POST", f"/api/gmail/refresh/{dead.user_id}")
    assert consent.status_code == 409 and consent.json()["status"] == "reauth_required"
    due = seed(expires_in=-10)
    endpoint.default = endpoint.default.SERVER_ERROR
    later = api(server, "POST", f"/api/gmail/refresh/{due.user_id}")
    assert later.status_code == 503 and later.headers["Retry-After"] == "5"
    assert "access_token" not in later.text


def test_health_readiness_and_metrics(server: Server, seed: SeedRow) -> None:
    user = seed().user_id
    assert api(server, "GET", "/healthz", None).json() == {"status": "ok"}
    assert api(server, "GET", "/readyz", None).json() == {"status": "ready"}
    api(server, "GET", f"/api/gmail/check/{user}")
    api(server, "GET", f"/api/gmail/check/{user}", None)
    metrics = api(server, "GET", "/metrics", None).text
    assert 'gmail_token_grants{state="ok"} 1' in metrics
    assert (
        'gmail_token_store_http_requests_total{route="/api/gmail/check/{user_id}",'
        'key="worker",status="200"} 1'
    ) in metrics
    assert 'key="-",status="401"' in metrics
    assert user not in metrics and FULL_KEY not in metrics


def test_the_access_log_holds_no_token_key_or_code(
    server: Server, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=60)
    token = api(server, "POST", f"/api/gmail/refresh/{row.user_id}").json()["access_token"]
    api(server, "GET", f"/api/gmail/check/{row.user_id}", CHECK_KEY)
    requests.get(server.url + "/auth/gmail/callback?code=4/secret-code-X&state=abc", timeout=10)
    log = server.stop()
    assert "POST /api/gmail/refresh/{user_id} 200 key=worker" in log
    assert "GET /api/gmail/check/{user_id} 200 key=dashboard" in log
    for secret in (token, row.access_token, row.refresh_token, FULL_KEY, CHECK_KEY, "secret-code"):
        assert secret not in log


# --- Google's security events ------------------------------------------------------------


def _verified(dsn: str, seed: SeedRow, sub: str, consented_days_ago: float = 1) -> Any:
    """A grant a verified consent recorded, `consented_days_ago`."""
    row = seed(expires_in=3000)
    consented = datetime.now(UTC) - timedelta(days=consented_days_ago)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE gmail_token SET metadata = metadata || %s WHERE user_id = %s",
            (
                Jsonb(
                    {
                        "google_account_id": sub,
                        "account_verified": True,
                        "consented_at": consented.isoformat(timespec="seconds"),
                    }
                ),
                row.user_id,
            ),
        )
    return row


def push(server: Server, token: str) -> requests.Response:
    return requests.post(
        server.url + "/risc",
        data=token,
        headers={"Content-Type": "application/secevent+jwt"},
        timeout=30,
    )


@pytest.mark.parametrize(
    "event",
    [
        RiscEvent.SESSIONS_REVOKED,
        RiscEvent.TOKENS_REVOKED,
        RiscEvent.ACCOUNT_DISABLED,
        RiscEvent.ACCOUNT_PURGED,
    ],
)
def test_an_account_event_records_the_grant_dead_once(
    server: Server,
    seed: SeedRow,
    dsn: str,
    endpoint: FakeTokenEndpoint,
    event: RiscEvent,
    fetch_row: Callable[[str], dict[str, Any]],
) -> None:
    account = endpoint.add_account("victim@gmail.com")
    victim, bystander = _verified(dsn, seed, account.sub), _verified(dsn, seed, "9" * 21)
    token = endpoint.security_event(event, iss_sub(account), audience=CLIENT_ID, jti="jti-1")
    assert push(server, token).status_code == 202
    dead = api(server, "POST", f"/api/gmail/refresh/{victim.user_id}")
    assert dead.status_code == 409 and "Cross-Account Protection" in dead.json()["reason"]
    assert endpoint.refresh_requests() == []  # nothing sent for a dead grant
    failure = fetch_row(victim.user_id)["metadata"]["refresh_failure"]
    assert failure["source"] == "risc" and event.rsplit("/", 1)[-1] in failure["description"]
    assert api(server, "POST", f"/api/gmail/refresh/{bystander.user_id}").status_code == 200
    before = fetch_row(victim.user_id)
    assert push(server, token).status_code == 202  # replayed: acts once
    assert fetch_row(victim.user_id) == before


def test_an_old_event_never_kills_a_grant_consented_after_it(
    server: Server, seed: SeedRow, dsn: str, endpoint: FakeTokenEndpoint
) -> None:
    account = endpoint.add_account("late@gmail.com")
    row = _verified(dsn, seed, account.sub, consented_days_ago=0.001)
    hour_ago = int(time.time()) - 3600
    token = endpoint.security_event(
        RiscEvent.TOKENS_REVOKED, iss_sub(account), audience=CLIENT_ID, iat=hour_ago
    )
    assert push(server, token).status_code == 202
    assert api(server, "POST", f"/api/gmail/refresh/{row.user_id}").status_code == 200


@pytest.mark.parametrize("alg", ["prefix", "hash_base64_sha512_sha512"])
def test_token_revoked_kills_the_grant_holding_that_refresh_token(
    server: Server, seed: SeedRow, endpoint: FakeTokenEndpoint, alg: TokenIdentifierAlg
) -> None:
    victim, other = seed(), seed()
    subject = oauth_token(victim.refresh_token, alg)
    token = endpoint.security_event(RiscEvent.TOKEN_REVOKED, subject, audience=CLIENT_ID)
    assert push(server, token).status_code == 202
    assert api(server, "POST", f"/api/gmail/refresh/{victim.user_id}").status_code == 409
    assert api(server, "POST", f"/api/gmail/refresh/{other.user_id}").status_code == 200


@pytest.mark.parametrize(
    "event", [RiscEvent.ACCOUNT_ENABLED, RiscEvent.VERIFICATION, "https://example.com/unknown"]
)
def test_other_events_are_logged_and_change_nothing(
    server: Server,
    seed: SeedRow,
    dsn: str,
    endpoint: FakeTokenEndpoint,
    event: str,
    fetch_row: Callable[[str], dict[str, Any]],
) -> None:
    account = endpoint.add_account("fine@gmail.com")
    row = _verified(dsn, seed, account.sub)
    before = fetch_row(row.user_id)
    subject = None if event == RiscEvent.VERIFICATION else iss_sub(account)
    extra = {"state": "probe"} if event == RiscEvent.VERIFICATION else None
    token = endpoint.security_event(event, subject, audience=CLIENT_ID, extra=extra)
    assert push(server, token).status_code == 202
    assert fetch_row(row.user_id) == before


def test_forged_foreign_and_malformed_tokens_change_nothing(
    server: Server,
    seed: SeedRow,
    dsn: str,
    endpoint: FakeTokenEndpoint,
    fetch_row: Callable[[str], dict[str, Any]],
) -> None:
    account = endpoint.add_account("target@gmail.com")
    row = _verified(dsn, seed, account.sub)
    before = fetch_row(row.user_id)
    subject = iss_sub(account)
    published_kid = json.loads(requests.get(endpoint.jwks_uri, timeout=10).text)["keys"][0]["kid"]
    bad = {
        "foreign key": endpoint.security_event(
            RiscEvent.TOKENS_REVOKED, subject, audience=CLIENT_ID, sign_with="foreign"
        ),
        "foreign key, published kid": endpoint.security_event(
            RiscEvent.TOKENS_REVOKED,
            subject,
            audience=CLIENT_ID,
            sign_with="foreign",
            kid=published_kid,
        ),
        "unsigned": endpoint.security_event(
            RiscEvent.TOKENS_REVOKED, subject, audience=CLIENT_ID, sign_with="none"
        ),
        "another audience": endpoint.security_event(
            RiscEvent.TOKENS_REVOKED, subject, audience="someone-else.apps.googleusercontent.com"
        ),
        "not a JWT": "definitely.not-a.jwt",
        "empty": "",
    }
    for name, token in bad.items():
        answer = push(server, token)
        assert answer.status_code == 400, (name, answer.text)
        assert "err" in answer.json()
    assert fetch_row(row.user_id) == before


# --- under load, through a database restart, and at shutdown -------------------------------


def test_sixty_four_clients_through_a_database_restart_get_only_200s_and_503s(
    dsn: str,
    endpoint: FakeTokenEndpoint,
    tmp_path: Path,
    postgres: PostgresServer,
    seed: SeedRow,
) -> None:
    rows = [seed(expires_in=3000) for _ in range(16)]
    # No cache: every request reads the row, so the outage is seen (with the cache, the
    # same clients get only 200s).
    server = Server(dsn, endpoint, tmp_path / "load.log", "--cache-ttl", "0")
    tokens = {row.user_id: row.access_token for row in rows}
    answers: Counter[int] = Counter()
    wrong: list[str] = []
    retry_after: list[str | None] = []
    stop = threading.Event()
    successes: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {FULL_KEY}"
        user = rows[index % len(rows)].user_id
        while not stop.is_set():
            try:
                answer = session.post(server.url + f"/api/gmail/refresh/{user}", timeout=30)
            except requests.RequestException:
                continue
            with lock:
                answers[answer.status_code] += 1
                if answer.status_code == 200:
                    successes.append(time.monotonic())
                    if answer.json()["access_token"] != tokens[user]:
                        wrong.append(user)
                elif answer.status_code == 503:
                    retry_after.append(answer.headers.get("Retry-After"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    time.sleep(6)
    postgres.stop_serving()
    time.sleep(4)
    postgres.start_serving()
    back = time.monotonic()
    time.sleep(10)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    server.stop()
    assert set(answers) <= {200, 503}, answers
    assert answers[503] > 0 and answers[200] > 100
    assert retry_after and set(retry_after) == {"5"}
    assert wrong == []
    assert min(t for t in successes if t >= back) - back < 1.0  # back to 200s at once


def test_a_server_writes_its_kept_grants_on_sigterm(
    dsn: str,
    endpoint: FakeTokenEndpoint,
    tmp_path: Path,
    postgres: PostgresServer,
    seed: SeedRow,
    fetch_row: Callable[[str], dict[str, Any]],
) -> None:
    endpoint.rotate_refresh_tokens = endpoint.revoke_rotated = True
    row = seed(expires_in=-10)
    server = Server(dsn, endpoint, tmp_path / "kept.log", "--cache-ttl", "0")
    try:
        # The database stops while the token endpoint answers: the refreshed grant (and its
        # rotated refresh token) exists only in the server's memory.
        endpoint.on_request = lambda _token: postgres.stop_serving()
        answer = api(server, "POST", f"/api/gmail/refresh/{row.user_id}")
        endpoint.on_request = None
        issued = endpoint.refresh_requests()[-1]
        assert answer.status_code == 200
        assert answer.json()["access_token"] == issued.issued_access_token
    finally:
        postgres.start_serving()
    assert fetch_row(row.user_id)["token_data"]["refresh_token"] == row.refresh_token
    log = server.stop()  # SIGTERM: the worker's store writes what it kept, then exits
    assert fetch_row(row.user_id)["token_data"]["refresh_token"] == issued.issued_refresh_token
    assert "never saved" not in log


def test_risc_register_points_the_stream_at_the_receiver(tmp_path: Path) -> None:
    """Against a stand-in for Google's RISC API: a JWT of the service account (RS256, its
    key id, the API's audience) and the stream's configuration, then a verification."""
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = tmp_path / "risc-admin.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "risc-admin@project.iam.gserviceaccount.com",
                "private_key_id": "key-1",
                "private_key": pem,
            }
        )
    )
    received: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    class Api(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            bearer = self.headers["Authorization"].removeprefix("Bearer ")
            header, claims, signature = bearer.split(".")
            key.public_key().verify(
                _unb64(signature),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(
                (self.path, json.loads(_unb64(claims)) | json.loads(_unb64(header)), body)
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    api_server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=api_server.serve_forever, daemon=True).start()
    try:
        assert SCRIPT is not None
        result = subprocess.run(
            [
                SCRIPT,
                "risc-register",
                "--service-account",
                str(account),
                "--receiver-url",
                "https://mail.example.com/risc",
                "--api-url",
                f"http://127.0.0.1:{api_server.server_address[1]}/v1beta",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        api_server.shutdown()
        api_server.server_close()
    assert result.returncode == 0, result.stderr
    (update_path, claims, update), (verify_path, _, verify) = received
    assert update_path == "/v1beta/stream:update" and verify_path == "/v1beta/stream:verify"
    assert claims["kid"] == "key-1" and claims["iss"] == claims["sub"]
    assert claims["aud"].endswith("google.identity.risc.v1beta.RiscManagementService")
    assert update["delivery"] == {
        "delivery_method": "https://schemas.openid.net/secevent/risc/delivery-method/push",
        "url": "https://mail.example.com/risc",
    }
    assert str(RiscEvent.TOKEN_REVOKED) in update["events_requested"]
    assert verify["state"].startswith("gmail-token-store-")
    assert pem not in result.stdout + result.stderr


def _unb64(text: str) -> bytes:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_several_workers_serve_and_stop_on_sigterm(
    dsn: str, endpoint: FakeTokenEndpoint, tmp_path: Path, seed: SeedRow
) -> None:
    rows = [seed() for _ in range(8)]
    server = Server(dsn, endpoint, tmp_path / "workers.log", "--workers", "2")
    try:
        with requests.Session() as session:
            for row in rows * 4:
                answer = session.post(
                    server.url + f"/api/gmail/refresh/{row.user_id}",
                    headers={"Authorization": f"Bearer {FULL_KEY}"},
                    timeout=30,
                )
                assert answer.json()["access_token"] == row.access_token
    finally:
        log = server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM), log
    assert log.count("Started server process") >= 2 and "Traceback" not in log


def test_every_connection_to_several_workers_has_tcp_nodelay(
    dsn: str, endpoint: FakeTokenEndpoint, tmp_path: Path, seed: SeedRow
) -> None:
    """Kept-alive connections to `--workers 2`: the worker's own socket of each has
    TCP_NODELAY on, read from the worker process itself (`pidfd_getfd`, as root).

    With `--workers N` uvicorn binds the listening socket itself and leaves its `proto` at
    0, so asyncio never sets TCP_NODELAY on the accepted ones (Kludex/uvicorn#3149): the
    body of each response went out only once its headers were acknowledged (45 ms a
    request after the first; one worker was not affected). `serve`'s protocol sets it.
    """
    row = seed(expires_in=3000)
    server = Server(dsn, endpoint, tmp_path / "nodelay.log", "--workers", "2")
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(6)
    ]
    try:
        for connection in connections:
            for _ in range(3):  # kept alive: the same socket throughout
                connection.request(
                    "GET",
                    f"/api/gmail/check/{row.user_id}",
                    headers={"Authorization": f"Bearer {FULL_KEY}"},
                )
                answer = connection.getresponse()
                assert answer.status == 200 and json.loads(answer.read())["status"] == "found"
                assert not answer.will_close
        assert connections[0].sock is not None
        seen = {
            _server_side_no_delay(server.port, connection.sock.getsockname()[1])
            for connection in connections
            if connection.sock is not None
        }
    finally:
        for connection in connections:
            connection.close()
        server.stop()
    assert seen == {1}


def _server_side_no_delay(server_port: int, client_port: int) -> int:
    """TCP_NODELAY of the server's end of the loopback connection from `client_port`, read
    on a duplicate of the socket taken from the process that holds it."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    inode = next(
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if (fields[1], fields[2]) == wanted
    )
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return _getsockopt_in(int(fd_dir.parent.name), int(fd.name))
    raise AssertionError(f"no process holds the server's end of port {client_port}")


def _getsockopt_in(pid: int, target_fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0)
        assert fd >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    with socket.socket(fileno=fd) as duplicate:
        return duplicate.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


_SYS_PIDFD_GETFD = 438  # the same number on x86-64 and arm64


@pytest.mark.parametrize(
    ("protocol", "no_delay"),
    [(H11Protocol, 0), (serve.NoDelayH11Protocol, 1), (serve.NoDelayHttpToolsProtocol, 1)],
)
def test_serves_protocols_set_tcp_nodelay_on_a_socket_bound_as_uvicorns_workers_bind_it(
    protocol: type[H11Protocol], no_delay: int
) -> None:
    """In process, on a listening socket made as `Config.bind_socket()` makes it (`proto`
    0): asyncio leaves TCP_NODELAY off on the connections it accepts (uvicorn's own
    protocol shows it), `serve`'s protocols on h11 and on httptools turn it on."""
    seen: list[int] = []

    class Recording(protocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def app(scope: Scope, _receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    listening = socket.socket(socket.AF_INET)
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=Recording, lifespan="off", log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]})
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        host, port = listening.getsockname()
        connection = http.client.HTTPConnection(host, port, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"ok"
        connection.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listening.close()
    assert seen == [no_delay]
