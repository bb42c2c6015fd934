"""`serve`: the web app on uvicorn, each worker owning its store (closed, its kept grants
written, when the worker stops).

uvicorn's workers are separate processes that import `make_app` by name, so the command's
configuration reaches them in the environment (`GMAIL_TOKEN_STORE_SERVE`, one JSON
value), which only this module writes and reads; the secrets stay in their own
variables (GMAIL_TOKEN_STORE_SECRET, _API_KEYS, _WEBHOOK_SECRET, the DSN's).

Each connection gets TCP_NODELAY as it is made, from our subclass of uvicorn's protocol
(`HTTP_PROTOCOL`: on httptools, or on h11 without it): with
`--workers N` uvicorn binds the listening socket itself and leaves its `proto` at 0, and
asyncio sets TCP_NODELAY only on sockets whose `proto` is IPPROTO_TCP (Kludex/uvicorn#3149).
Without it Nagle held each response's body until its headers were acknowledged, and the
client delays that ACK: 45 ms on every keep-alive request after the first, on Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from .. import AsyncTokenStore, StoreOptions
from .._options import read_small_file
from ..consent import CALLBACK_PATH, AsyncConsentFlow
from ..notices import send_notices_async
from ..web import GOOGLE_RISC_CONFIG_URL, ApiKeys, RiscReceiver, create_app

#: uvicorn waits this long for open requests at shutdown; then each store is closed.
GRACEFUL_SECONDS = 10
_CONFIG = "GMAIL_TOKEN_STORE_SERVE"


@dataclass(frozen=True)
class ServeConfig:
    """What the workers need besides secrets (JSON in the environment)."""

    dsn_from_command_line: str | None
    client_secrets: str | None
    public_url: str | None
    api_keys_file: str | None
    risc: bool
    risc_config_url: str
    risc_client_ids: Sequence[str]
    notify: str | None
    cache_ttl: float | None


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol on h11, with TCP_NODELAY on each connection's socket."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)


#: The protocol `serve` runs: on httptools (uvicorn's C parser, nearly twice h11's requests
#: per second) when it is installed, as the `web` extra does; else on h11.
HTTP_PROTOCOL: type[asyncio.Protocol] = NoDelayH11Protocol
if HttpToolsProtocol is not None:

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's HTTP/1.1 protocol on httptools, with TCP_NODELAY (as above)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _no_delay(transport)
            super().connection_made(transport)

    HTTP_PROTOCOL = NoDelayHttpToolsProtocol


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Send small writes at once (what asyncio does itself for sockets it sees as TCP)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):  # the client may be gone already
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _api_keys(config: ServeConfig) -> ApiKeys | None:
    text = os.environ.get("GMAIL_TOKEN_STORE_API_KEYS", "").strip()
    if config.api_keys_file:
        text = read_small_file(config.api_keys_file).decode()
    return ApiKeys.parse(text) if text else None


def make_app() -> Starlette:
    """One worker's app: its own store, flows and receiver, from `run`'s configuration."""
    config = ServeConfig(**json.loads(os.environ[_CONFIG]))
    library = logging.getLogger("gmail_token_store")
    if not library.handlers:  # the command's process: its log, and the access log, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
    options: StoreOptions = {} if config.cache_ttl is None else {"cache_ttl": config.cache_ttl}
    store = AsyncTokenStore.from_env(config.dsn_from_command_line, **options)
    consent = None
    client_ids = list(config.risc_client_ids)
    if config.client_secrets and config.public_url:
        consent = AsyncConsentFlow.from_client_secrets(
            store,
            config.client_secrets,
            redirect_uri=config.public_url + CALLBACK_PATH,
            secret=os.environ["GMAIL_TOKEN_STORE_SECRET"],
        )
        client_ids.append(consent.client_id)
    risc = None
    if config.risc:

        async def notify(user_ids: Sequence[str]) -> None:
            if config.notify and config.public_url:
                await send_notices_async(
                    store,
                    config.notify,
                    secret=os.environ["GMAIL_TOKEN_STORE_WEBHOOK_SECRET"],
                    public_url=config.public_url,
                    link_secret=os.environ.get("GMAIL_TOKEN_STORE_SECRET"),
                    users=user_ids,
                )

        risc = RiscReceiver(
            store, client_ids=client_ids, config_url=config.risc_config_url, on_revoked=notify
        )
    return create_app(
        store, consent=consent, api_keys=_api_keys(config), risc=risc, close_store=True
    )


def run(
    *,
    client_secrets: Path | None,
    public_url: str | None,
    dsn: str | None,
    host: str,
    port: int,
    workers: int,
    api_keys_file: Path | None,
    risc: bool,
    risc_client_ids: Sequence[str],
    notify: str | None,
    cache_ttl: float | None,
) -> None:
    """Serve until SIGINT or SIGTERM: uvicorn drains open requests, then each worker's
    app closes its store (writing kept grants)."""
    config = ServeConfig(
        dsn_from_command_line=dsn,
        client_secrets=str(client_secrets.resolve()) if client_secrets else None,
        public_url=public_url,
        api_keys_file=str(api_keys_file.resolve()) if api_keys_file else None,
        risc=risc,
        risc_config_url=os.environ.get("GMAIL_TOKEN_STORE_RISC_CONFIG_URL")
        or GOOGLE_RISC_CONFIG_URL,
        risc_client_ids=list(risc_client_ids),
        notify=notify,
        cache_ttl=cache_ttl,
    )
    os.environ[_CONFIG] = json.dumps(asdict(config))
    make_app()  # the configuration is checked here, once, before a worker starts
    uvicorn.run(
        "gmail_token_store._cli.serve:make_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=HTTP_PROTOCOL,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        access_log=False,  # ours (gmail_token_store.access) holds no code, link or key
        proxy_headers=True,
        server_header=False,
        log_level="info",
    )
