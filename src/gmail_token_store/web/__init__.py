"""The library's web app: the consent, auth-server's API, Google's security events, ops.

    app = create_app(store, consent=AsyncConsentFlow(store, ...), api_keys=ApiKeys.parse(...),
                     risc=RiscReceiver(store, client_ids=[...]))

A Starlette app (mount it in FastAPI, or run it alone: `gmail-token-store serve`) over an
`AsyncTokenStore`. Each part is switched on by passing what it needs; `/healthz`,
`/readyz` and `/metrics` are always there. The app uses only the library's public API and
reads no environment. Needs the `web` extra (Starlette, uvicorn).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .. import AsyncTokenStore, TokenStoreError
from ..consent import AsyncConsentFlow
from ._api import ApiKey, ApiKeys, api_routes
from ._consent import consent_routes
from ._ops import Observed, Requests, ops_routes
from ._risc import (
    GOOGLE_RISC_CONFIG_URL,
    RiscOutcome,
    RiscReceiver,
    RiscRejected,
    register_stream,
)

__all__ = [
    "GOOGLE_RISC_CONFIG_URL",
    "ApiKey",
    "ApiKeys",
    "RiscOutcome",
    "RiscReceiver",
    "create_app",
    "register_stream",
]

#: Requests larger than this are refused (413): every route takes a query or a small body.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    store: AsyncTokenStore,
    *,
    consent: AsyncConsentFlow | None = None,
    api_keys: ApiKeys | None = None,
    risc: RiscReceiver | None = None,
    cache_seconds: float | None = None,
    close_store: bool = False,
) -> Starlette:
    """The app, with the parts given.

    Args:
        store: the store the app works on.
        consent: the re-consent flow: its start route (`/auth/gmail/passport`) and
            callback (`/auth/gmail/callback`); a 409 from the API then carries a fresh
            reconnect link.
        api_keys: serve `GET /api/gmail/check/{user_id}` and
            `POST /api/gmail/refresh/{user_id}` to holders of these keys.
        risc: serve `POST /risc`, Google's security events.
        cache_seconds: how stale the API may answer from the store's cache (default: the
            store's `cache_ttl`; 0 reads the row every time).
        close_store: close the store when the app shuts down (its kept grants written
            first), for an app that owns its store (`gmail-token-store serve`); otherwise
            the store's lifetime is the caller's.
    """
    if not isinstance(store, AsyncTokenStore):
        raise TypeError("create_app needs an AsyncTokenStore")
    requests = Requests()
    # The router tries the routes in order (no two share a path): the API's, the busiest,
    # first.
    routes: list[BaseRoute] = []
    if api_keys is not None:
        seconds = store.cache_ttl if cache_seconds is None else cache_seconds
        link_for = consent.reconnect_link if consent is not None else None
        routes += api_routes(store, api_keys, cache_seconds=seconds, link_for=link_for)
    routes += ops_routes(store, requests)
    if consent is not None:
        routes += consent_routes(consent)
    if risc is not None:
        routes.append(Route("/risc", _risc_route(risc), methods=["POST"]))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                await store.aclose()

    app = Starlette(routes=routes, lifespan=lifespan, max_body_size=MAX_BODY_BYTES)
    app.add_middleware(Observed, requests=requests)
    return app


def _risc_route(receiver: RiscReceiver) -> Callable[[Request], Awaitable[Response]]:
    async def receive(request: Request) -> Response:
        try:
            await receiver.receive(await request.body())
        except RiscRejected as exc:
            return JSONResponse({"err": exc.error, "description": exc.description}, status_code=400)
        except TokenStoreError:
            return JSONResponse(
                {"err": "temporarily_unavailable", "description": "retry later"},
                status_code=503,
                headers={"Retry-After": "30"},
            )
        return Response(status_code=202)

    return receive
