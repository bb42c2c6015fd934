"""A fake of Google's OAuth token endpoint (and its consent redirect), over real HTTP.

It records every request and answers what a test scripts: success, `invalid_grant`, client
errors, 5xx, 429, a non-JSON 502, slowly, or not at all; it can rotate refresh tokens and
revoke the one each rotation replaced, like an endpoint with refresh-token rotation.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit


class Reply(enum.Enum):
    """What the fake endpoint answers to one token request."""

    OK = "ok"
    INVALID_GRANT = "invalid_grant"  # 400: revoked / expired refresh token
    INVALID_CLIENT = "invalid_client"  # 401
    UNAUTHORIZED_CLIENT = "unauthorized_client"  # 400
    DELETED_CLIENT = "deleted_client"  # 401
    SERVER_ERROR = "server_error"  # 500, JSON body
    UNAVAILABLE = "temporarily_unavailable"  # 503, JSON body
    RATE_LIMITED = "rate_limited"  # 429, JSON body
    BAD_GATEWAY_HTML = "bad_gateway_html"  # 502, an HTML page: what a proxy says in an outage
    HANG = "hang"  # accepts the request and never answers (until release() or close())


_ERROR_ANSWERS: dict[Reply, tuple[int, str]] = {
    Reply.INVALID_GRANT: (400, "Token has been expired or revoked."),
    Reply.INVALID_CLIENT: (401, "The OAuth client was not found."),
    Reply.UNAUTHORIZED_CLIENT: (400, "Unauthorized"),
    Reply.DELETED_CLIENT: (401, "The OAuth client was deleted."),
    Reply.SERVER_ERROR: (500, "Internal error"),
    Reply.UNAVAILABLE: (503, "The service is currently unavailable."),
    Reply.RATE_LIMITED: (429, "Rate limit exceeded"),
}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request the fake endpoint received, and what it answered."""

    grant_type: str
    client_id: str | None
    refresh_token: str | None = field(repr=False)
    client_secret: str | None = field(repr=False)
    code: str | None
    reply: Reply
    received_at: float
    issued_access_token: str | None = field(default=None, repr=False)
    #: The rotated refresh token sent back, when rotation is on.
    issued_refresh_token: str | None = field(default=None, repr=False)


class FakeTokenEndpoint:
    """Google's token endpoint on http://127.0.0.1:<port>/token, for tests and demos.

    Answers, in order of precedence: replies queued with `script()`, `invalid_grant` for a
    refresh token passed to `revoke()`, then `default` (Reply.OK unless changed). Each
    answer waits `latency` seconds first. Use as a context manager, or call `close()`.

    Args:
        expires_in: lifetime in seconds of the access tokens it issues.
        latency: seconds to wait before each answer.
        rotate_refresh_tokens: send a new refresh token with every refresh.
        revoke_rotated: with rotation, answer `invalid_grant` to the refresh token each
            rotation replaced (an endpoint that allows one live refresh token per grant).
        granted_scopes: the `scope` to put in refresh answers (None: leave it out).
        max_hang: seconds a HANG reply holds the connection at most.

    `on_request`, if set, is called with the refresh token of each refresh request before
    it is answered (in the server's thread): a test can stop a database at that moment.
    """

    def __init__(
        self,
        *,
        expires_in: int = 3599,
        latency: float = 0.0,
        rotate_refresh_tokens: bool = False,
        revoke_rotated: bool = False,
        granted_scopes: Sequence[str] | None = None,
        max_hang: float = 60.0,
    ) -> None:
        self.expires_in = expires_in
        self.latency = latency
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.revoke_rotated = revoke_rotated
        self.on_request: Callable[[str | None], None] | None = None
        self.granted_scopes = list(granted_scopes) if granted_scopes is not None else None
        self.default = Reply.OK
        self.max_hang = max_hang
        self._lock = threading.Lock()
        self._scripted: list[Reply] = []
        self._revoked: set[str] = set()
        self._codes: dict[str, list[str]] = {}
        self._requests: list[TokenRequest] = []
        self._release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.endpoint = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits up to one interval
            name="fake-token-endpoint",
            daemon=True,
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        """The consent page: redirects at once to the redirect_uri with a code."""
        return f"{self.base_url}/auth"

    @property
    def requests(self) -> list[TokenRequest]:
        """Every token request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def refresh_requests(self) -> list[TokenRequest]:
        """The refresh_token grants received so far."""
        return [r for r in self.requests if r.grant_type == "refresh_token"]

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then fall back as usual."""
        with self._lock:
            self._scripted.extend(replies)

    def revoke(self, refresh_token: str) -> None:
        """Answer `invalid_grant` to every later refresh with this refresh token."""
        with self._lock:
            self._revoked.add(refresh_token)

    def release(self) -> None:
        """Let requests held by HANG go (their connections are closed without an answer)."""
        self._release.set()

    def client_config(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """A Google "installed app" client secrets document that points at this endpoint."""
        return {
            "installed": {
                "client_id": client_id,
                "client_secret": client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://localhost"],
            }
        }

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeTokenEndpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeTokenEndpoint {self.token_uri} requests={len(self._requests)}>"

    # --- called by the handler threads ------------------------------------------------------

    def _choose(self, refresh_token: str | None) -> Reply:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
            if refresh_token is not None and refresh_token in self._revoked:
                return Reply.INVALID_GRANT
            return self.default

    def issue_code(self, scopes: list[str]) -> str:
        """Issue an authorization code for the consent page (the handler calls it)."""
        code = "4/fake-code-" + secrets.token_hex(8)
        with self._lock:
            self._codes[code] = scopes
        return code

    def _success_body(
        self,
        access_token: str,
        grant_type: str,
        code_scopes: list[str] | None,
        refresh_token: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }
        if grant_type == "authorization_code":
            body["refresh_token"] = "1//fake-refresh-" + secrets.token_urlsafe(24)
            body["scope"] = " ".join(code_scopes or [])
            return body
        if self.rotate_refresh_tokens:
            body["refresh_token"] = "1//fake-refresh-" + secrets.token_urlsafe(24)
            if self.revoke_rotated and refresh_token:
                with self._lock:
                    self._revoked.add(refresh_token)
        if self.granted_scopes is not None:
            body["scope"] = " ".join(self.granted_scopes)
        return body

    def answer(self, form: dict[str, str]) -> tuple[int, str, bytes]:
        """Choose, record and return (status, content type, body) for one token request."""
        grant_type = form.get("grant_type", "")
        refresh_token = form.get("refresh_token")
        code = form.get("code")
        hook = self.on_request
        if hook is not None and grant_type == "refresh_token":
            hook(refresh_token)
        reply = self._choose(refresh_token)
        if self.latency:
            time.sleep(self.latency)
        code_scopes: list[str] | None = None
        if reply is Reply.OK and grant_type == "authorization_code":
            with self._lock:
                code_scopes = self._codes.pop(code or "", None)
            if code_scopes is None:
                reply = Reply.INVALID_GRANT
        elif reply is Reply.OK and grant_type != "refresh_token":
            reply = Reply.UNAUTHORIZED_CLIENT
        issued = None
        body: dict[str, Any] = {}
        if reply is Reply.OK:
            issued = "ya29.fake-" + secrets.token_urlsafe(24)
            body = self._success_body(issued, grant_type, code_scopes, refresh_token)
            answer = (200, "application/json", json.dumps(body).encode())
        elif reply is Reply.BAD_GATEWAY_HTML:
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            answer = (502, "text/html", page)
        elif reply is Reply.HANG:
            answer = (0, "", b"")
        else:
            status, description = _ERROR_ANSWERS[reply]
            error = "rate_limit_exceeded" if reply is Reply.RATE_LIMITED else reply.value
            payload = {"error": error, "error_description": description}
            answer = (status, "application/json", json.dumps(payload).encode())
        with self._lock:
            self._requests.append(
                TokenRequest(
                    grant_type=grant_type,
                    client_id=form.get("client_id"),
                    refresh_token=refresh_token,
                    client_secret=form.get("client_secret"),
                    code=code,
                    reply=reply,
                    received_at=time.time(),
                    issued_access_token=issued,
                    issued_refresh_token=body.get("refresh_token") if issued else None,
                )
            )
        if reply is Reply.HANG:
            self._release.wait(self.max_hang)
        return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Herds open many connections at once: the default backlog of 5 drops their SYNs,
    # and each dropped one costs the client a second before it tries again.
    request_queue_size = 256
    endpoint: FakeTokenEndpoint


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, like Google's endpoint
    # Headers and body go out in separate writes: without TCP_NODELAY a kept-alive
    # connection waits for the client's delayed ACK (40 ms) between them.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/token":
            self._send(404, "application/json", b'{"error": "not_found"}')
            return
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if "json" in (self.headers.get("Content-Type") or ""):
            form = {key: str(value) for key, value in json.loads(raw or "{}").items()}
        else:
            form = {key: values[0] for key, values in parse_qs(raw).items()}
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Basic "):  # RFC 6749 2.3.1: the client may authenticate so
            decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            client_id, _, client_secret = decoded.partition(":")
            form.setdefault("client_id", unquote_plus(client_id))
            form.setdefault("client_secret", unquote_plus(client_secret))
        status, content_type, body = self.server.endpoint.answer(form)
        if status == 0:  # HANG: drop the connection without a word
            self.close_connection = True
            return
        self._send(status, content_type, body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/auth":
            self._send(404, "text/plain", b"not found")
            return
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        redirect_uri = query.get("redirect_uri", "")
        if urlsplit(redirect_uri).hostname not in ("localhost", "127.0.0.1"):
            self._send(400, "text/plain", b"redirect_uri must be on loopback")
            return
        code = self.server.endpoint.issue_code(query.get("scope", "").split())
        target = redirect_uri + "?" + urlencode({"code": code, "state": query.get("state", "")})
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)
