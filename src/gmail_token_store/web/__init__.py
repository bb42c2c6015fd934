"""The library's web app: the consent routes (and, switched on one by one, more).

    app = create_app(store, consent=AsyncConsentFlow(store, ...))

A Starlette app (mount it in FastAPI, or run it alone: `gmail-token-store serve`) over an
`AsyncTokenStore`; every part is switched on by passing what it needs, and the app uses
only the library's public API. Needs the `web` extra (Starlette, uvicorn).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from .. import AsyncTokenStore
from ..consent import AsyncConsentFlow
from ._consent import consent_routes

__all__ = ["create_app"]

#: Requests larger than this are refused (413): every route takes a query or a small body.
MAX_BODY_BYTES = 64 * 1024


def create_app(
    store: AsyncTokenStore,
    *,
    consent: AsyncConsentFlow | None = None,
    close_store: bool = False,
) -> Starlette:
    """The app: the consent routes when `consent` is given.

    Args:
        store: the store the app works on.
        consent: the re-consent flow; serves its start route (`/auth/gmail/passport`) and
            callback (`/auth/gmail/callback`).
        close_store: close the store when the app shuts down (its kept grants written
            first), for an app that owns its store (`gmail-token-store serve`); otherwise
            the store's lifetime is the caller's.
    """
    if not isinstance(store, AsyncTokenStore):
        raise TypeError("create_app needs an AsyncTokenStore")
    routes: list[BaseRoute] = []
    if consent is not None:
        routes += consent_routes(consent)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if close_store:
                await store.aclose()

    return Starlette(routes=routes, lifespan=lifespan, max_body_size=MAX_BODY_BYTES)
