"""The token endpoint's HTTP clients, and a deadline the sync client cannot overstay.

A refresh runs with the row lock held, so its token request must end within its budget,
the answer's body included. httpx's timeouts are per network operation: an endpoint that
sends one byte every half second never trips a 2 s read timeout, and a sync request would
run for as long as the endpoint drips (the async shell bounds the whole request with
`asyncio.timeout`). So the sync client's connections go through `_DeadlineBackend`: every
connect, read and write waits at most until the deadline `deadline()` sets for the
request in this thread, and one past it raises httpcore's timeout (a `TimeoutException`
for httpx, "did not answer in time" for the core).

The backend is put under httpx's own transports (and the proxy transports it mounts from
`HTTPS_PROXY`), so TLS settings, proxies and pooling stay httpx's.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from .events import logger

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "gmail_token_store_http_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound every network operation of requests made inside to `seconds` from now."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout`, shortened to what is left before the deadline (if one is set)."""
    until = _deadline.get()
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise error("the request's time budget ran out")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, bounded, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def sync_client(max_connections: int) -> httpx.Client:
    """httpx's Client, whose connections obey `deadline()` (see the module docstring)."""
    client = httpx.Client(
        limits=httpx.Limits(max_connections=max_connections), follow_redirects=False
    )
    # httpcore takes a network backend (public API); httpx builds its pools without
    # letting us pass one, so it is set on each pool httpx made. tests/test_hardening.py
    # (a dripping endpoint) fails if a new httpx moves it.
    transports = [client._transport, *client._mounts.values()]  # noqa: SLF001
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]  # noqa: SLF001
        elif transport is not None:
            logger.warning(
                "this httpx has no network backend to bound token requests with; a token "
                "endpoint that answers slowly can hold a row lock past the refresh budget"
            )
    return client


def async_client(max_connections: int) -> httpx.AsyncClient:
    """httpx's AsyncClient for one event loop: no idle connections (a kept-alive socket
    belongs to the loop that opened it); the async shell bounds each request itself."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
        follow_redirects=False,
    )
