"""The fake Google's HTTP server: requests in, `Answer`s out, on 127.0.0.1.

Only HTTP lives here (parsing bodies and client credentials, keep-alive, dropping a held
connection); what each path answers is decided by the app (`FakeTokenEndpoint.serve`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote_plus, urlsplit


@dataclass(frozen=True, slots=True)
class Request:
    """One request: `form` holds the body's fields (first value of each), the client
    credentials of a Basic Authorization header merged in; `body` is the raw body."""

    method: str
    path: str
    query: str
    body: str = field(repr=False)
    form: dict[str, str] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back; status 0 closes the connection without a word (Reply.HANG)."""

    status: int
    content_type: str = "application/json"
    body: bytes = b""
    location: str | None = None

    @classmethod
    def json(cls, status: int, document: Any) -> Answer:
        return cls(status, "application/json", json.dumps(document).encode())

    @classmethod
    def page(cls, status: int, html: str | bytes) -> Answer:
        body = html.encode() if isinstance(html, str) else html
        return cls(status, "text/html; charset=utf-8", body)

    @classmethod
    def redirect(cls, location: str) -> Answer:
        return cls(302, "text/plain", b"", location)


class App(Protocol):
    def serve(self, request: Request) -> Answer: ...


class Server(ThreadingHTTPServer):
    """Serves `app` on 127.0.0.1 (a free port) from a daemon thread, until `close()`."""

    daemon_threads = True
    # Herds open many connections at once: the default backlog of 5 drops their SYNs,
    # and each dropped one costs the client a second before it tries again.
    request_queue_size = 256

    def __init__(self, app: App) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app = app
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},  # close() waits up to one interval
            name="fake-token-endpoint",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, like Google's endpoint
    # Headers and body go out in separate writes: without TCP_NODELAY a kept-alive
    # connection waits for the client's delayed ACK (40 ms) between them.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def do_GET(self) -> None:
        self._serve("GET", "")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve("POST", self.rfile.read(length).decode())

    def _serve(self, method: str, body: str) -> None:
        parts = urlsplit(self.path)
        try:
            form = self._form(body)
        except ValueError:
            self._send(Answer.json(400, {"error": "invalid_request"}))
            return
        answer = self.server.app.serve(Request(method, parts.path, parts.query, body, form))
        if answer.status == 0:  # HANG: drop the connection without a word
            self.close_connection = True
            return
        self._send(answer)

    def _form(self, body: str) -> dict[str, str]:
        if "json" in (self.headers.get("Content-Type") or ""):
            document = json.loads(body or "{}")
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            form = {key: str(value) for key, value in document.items()}
        else:
            form = {key: values[0] for key, values in parse_qs(body).items()}
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Basic "):  # RFC 6749 2.3.1: the client may authenticate so
            decoded = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            client_id, _, client_secret = decoded.partition(":")
            form.setdefault("client_id", unquote_plus(client_id))
            form.setdefault("client_secret", unquote_plus(client_secret))
        return form

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        if answer.location is not None:
            self.send_header("Location", answer.location)
        if answer.content_type.startswith("text/html"):
            self.send_header("Cache-Control", "no-store")  # consent pages, like Google's
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(answer.body)
