"""`authorize`: the consent flow run by an operator, with a loopback redirect.

The same `ConsentFlow` as the web's (offline access, a consent prompt, `openid email`,
PKCE, the ID token's account checked, saved under the row lock); only the callback is a
one-shot HTTP server on 127.0.0.1 that this command runs while it waits. The account
must be the row's (by Google account id, else email), or `--email` for a new row.

Bounded whatever a local client does: each connection is served in its own thread (a
client that connects and sends nothing, or drips, holds up nobody), only a request carrying
this consent's state is taken as the callback, and at `--timeout` every connection still
open is shut, so the command ends then. Nothing touches `os.environ`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
import webbrowser
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .. import GMAIL_SEND, TokenStore
from .._options import read_small_file
from ..consent import CALLBACK_PATH, ConsentFlow, ConsentResult
from ..exceptions import ConfigurationError

#: The longest a local client may take to send its request (seconds).
_REQUEST_TIMEOUT = 5.0


class _Callback(BaseHTTPRequestHandler):
    server: _OneShot
    timeout = _REQUEST_TIMEOUT  # per socket read: a client that sends nothing is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        if parts.path != CALLBACK_PATH or not self.server.claim(query):
            self._answer(404, "Not the consent callback.")
            return
        try:
            self.server.answered.wait(timeout=60)
            self._answer(200, self.server.message)
        finally:
            self.server.delivered.set()

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _OneShot(ThreadingHTTPServer):
    """The loopback callback: one thread per connection, the first request with this
    consent's state taken, every connection shut by `drop_connections()`."""

    daemon_threads = True
    block_on_close = False  # closing never waits for a client's thread (it is shut first)

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Callback)
        self.state = ""  # the state of the consent started, set before anyone can know it
        self.query: dict[str, str] | None = None
        self.message = ""
        self.answered = threading.Event()  # the consent is done: answer the browser
        self.delivered = threading.Event()  # the browser has its answer
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def claim(self, query: dict[str, str]) -> bool:
        """Take `query` as the callback if it is the first one carrying our state."""
        with self._lock:
            if (
                self.query is not None
                or not self.state
                or not secrets.compare_digest(query.get("state", "").encode(), self.state.encode())
            ):
                return False
            self.query = query
            return True

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no error of the command's (no traceback on stderr)."""

    def drop_connections(self) -> None:
        """Shut every connection still open: their threads stop reading at once."""
        with self._lock:
            still_open = list(self._open)
        for connection in still_open:
            with contextlib.suppress(OSError):  # already gone
                connection.shutdown(socket.SHUT_RDWR)


def authorize(
    store: TokenStore,
    *,
    client_secrets: Path,
    user_id: str,
    email: str | None,
    scopes: Sequence[str] = (GMAIL_SEND,),
    open_browser: bool,
    timeout: float,
    port: int = 0,
) -> ConsentResult:
    """Run the consent for one user and store the grant.

    The authorization URL is printed (and opened, with `open_browser`); the browser's
    redirect to the loopback port completes the consent.

    Raises:
        ConfigurationError: an unusable client secrets file, a refused token_uri, a new
            user without `email`, a port in use. TimeoutError: no redirect arrived in time.
        ConsentError and its subclasses: declined, another account, a scope not granted.
    """
    client = _client(client_secrets)
    token_uri = str(client.get("token_uri") or "https://oauth2.googleapis.com/token")
    refusal = store.token_uri_problem(token_uri)
    if refusal:
        raise ConfigurationError(f"client secrets file {client_secrets.name}: {refusal}")
    if email is None and store.check(user_id).status != "found":
        raise ConfigurationError(
            f"user {user_id} has no grant yet: pass --email, the Gmail address that must consent"
        )
    deadline = time.monotonic() + timeout
    try:
        listening = _OneShot(port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on 127.0.0.1:{port} for Google's redirect ({exc.strerror}); "
            "pass another --port, or none"
        ) from None
    with listening as server:
        bound = server.server_address[1]
        flow = ConsentFlow(
            store,
            client_id=str(client["client_id"]),
            client_secret=str(client["client_secret"]),
            redirect_uri=f"http://127.0.0.1:{bound}{CALLBACK_PATH}",
            start_url=f"http://127.0.0.1:{bound}/",  # (no start route: the URL is printed)
            secret=secrets.token_urlsafe(32),
            scopes=scopes,
            auth_uri=str(client.get("auth_uri") or "https://accounts.google.com/o/oauth2/v2/auth"),
            token_uri=token_uri,
        )
        start = flow.start_for(user_id, expect_email=email)
        server.state = parse_qs(urlsplit(start.authorization_url).query)["state"][0]
        print(f"Open this URL in a browser to authorize Gmail:\n{start.authorization_url}")
        if open_browser:
            webbrowser.open(start.authorization_url)
        serving = threading.Thread(target=_serve, args=(server, deadline), daemon=True)
        serving.start()
        try:
            while server.query is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no authorization arrived within {timeout:g} s")
                time.sleep(0.05)
            try:
                result = flow.complete(server.query, binding=start.binding)
            except Exception as exc:
                server.message = f"Gmail was not connected: {exc}"
                raise
            server.message = "Gmail access granted. You can close this window."
        finally:
            server.answered.set()
            if server.query is not None:  # the browser gets its answer first
                server.delivered.wait(timeout=_REQUEST_TIMEOUT)
            server.drop_connections()
            serving.join(timeout=_REQUEST_TIMEOUT)  # ends by the deadline: see _serve
    return result


def _serve(server: _OneShot, deadline: float) -> None:
    """Handle requests until the callback arrived, at most until `deadline`."""
    while server.query is None and time.monotonic() < deadline:
        server.timeout = max(min(0.5, deadline - time.monotonic()), 0.01)
        server.handle_request()


def _client(path: Path) -> Mapping[str, Any]:
    try:
        config = json.loads(read_small_file(path))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read client secrets file {path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise ConfigurationError(f"client secrets file {path.name} is not a JSON file") from None
    client = None
    if isinstance(config, dict):
        client = config.get("installed") or config.get("web")
    if (
        not isinstance(client, dict)
        or not client.get("client_id")
        or not client.get("client_secret")
    ):
        raise ConfigurationError(
            f"client secrets file {path.name} has no 'installed' or 'web' client "
            "(download it from the Google Cloud console: OAuth client ID, Desktop app)"
        )
    return client
