"""`serve`: the web app on uvicorn, owning its store (closed, kept grants written, on exit).

The configuration comes from the command line and the environment; uvicorn's workers are
separate processes that import `make_app` by name, so it is handed to them in the
environment (`GMAIL_TOKEN_STORE_SERVE_*`), which only this module reads and writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from .. import AsyncTokenStore
from ..consent import CALLBACK_PATH, AsyncConsentFlow
from ..web import create_app

#: uvicorn waits this long for open requests at shutdown, then the store is closed.
GRACEFUL_SECONDS = 10

_CLIENT_SECRETS = "GMAIL_TOKEN_STORE_SERVE_CLIENT_SECRETS"
_PUBLIC_URL = "GMAIL_TOKEN_STORE_SERVE_PUBLIC_URL"
_DSN = "GMAIL_TOKEN_STORE_SERVE_DSN"


class PathOnly(logging.Filter):
    """uvicorn's access log lines without query strings: a reconnect link's carries its
    signature (good for a week), the callback's Google's code and the consent's state."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs '%s - "%s %s HTTP/%s" %d': client, method, path?query, version, status
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].partition("?")[0], args[3], args[4])
        return True


_PATH_ONLY = PathOnly()


def make_app() -> Starlette:
    """The app of one worker: its own store and flows, from what `run` put in the
    environment (and the store's own: GMAIL_TOKEN_STORE_DSN, GOOGLE_CLIENT_*, ...)."""
    access_log = logging.getLogger("uvicorn.access")  # configured by uvicorn by now
    if _PATH_ONLY not in access_log.filters:
        access_log.addFilter(_PATH_ONLY)
    store = AsyncTokenStore.from_env(os.environ.get(_DSN) or None)
    public_url = os.environ[_PUBLIC_URL]
    consent = AsyncConsentFlow.from_client_secrets(
        store,
        os.environ[_CLIENT_SECRETS],
        redirect_uri=public_url + CALLBACK_PATH,
        secret=os.environ["GMAIL_TOKEN_STORE_SECRET"],
    )
    return create_app(store, consent=consent, close_store=True)


def run(
    *,
    client_secrets: Path,
    public_url: str,
    secret: str,
    dsn: str | None,
    host: str,
    port: int,
    workers: int = 1,
) -> None:
    """Serve until SIGINT or SIGTERM: uvicorn drains open requests, then each worker's
    app closes its store (writing kept grants)."""
    os.environ[_CLIENT_SECRETS] = str(client_secrets.resolve())
    os.environ[_PUBLIC_URL] = public_url
    os.environ["GMAIL_TOKEN_STORE_SECRET"] = secret
    if dsn:
        os.environ[_DSN] = dsn
    make_app()  # the configuration is checked here, once, before uvicorn starts
    uvicorn.run(
        "gmail_token_store._cli.serve:make_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        proxy_headers=True,
        server_header=False,
        log_level="info",
    )
