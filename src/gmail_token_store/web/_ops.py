"""Operations: liveness, readiness, metrics, and an access log that holds no secret.

    GET /healthz   200 while the process lives
    GET /readyz    200 when the database answers, else 503
    GET /metrics   Prometheus text: the grant-health families of `gmail-token-store
                   metrics`, and requests by route, API key name and status, and latency

The access log replaces uvicorn's (which prints each request's query string: the consent
callback's code, a link's signature): method, route, status, API key name, milliseconds.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import AsyncTokenStore, TokenStoreError
from ..metrics import exposition

access_log = logging.getLogger("gmail_token_store.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Latency buckets (seconds) of `gmail_token_store_http_request_duration_seconds`.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The grant-health families are computed from the whole table: at most this often.
HEALTH_EVERY = 30.0
#: A nil UUID: checking it is one indexed read that finds nothing (the readiness probe).
_PROBE = "00000000-0000-0000-0000-000000000000"


class Requests:
    """Counts of requests by (route, key name, status), and a latency histogram by route."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, int]] = Counter()
        #: Per route, requests by the first bucket they fall in (the last: above them all);
        #: summed into Prometheus's cumulative buckets only when exposed.
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, route: str, key: str, status: int, seconds: float) -> None:
        self.counts[(route, key, status)] += 1
        buckets = self.buckets.get(route)
        if buckets is None:
            buckets = self.buckets[route] = [0] * (len(BUCKETS) + 1)
        buckets[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds
        self.sums[route] = self.sums.get(route, 0.0) + seconds

    def exposition(self) -> str:
        total = "gmail_token_store_http_requests_total"
        lines = [
            f"# HELP {total} Requests by route, API key name and status.",
            f"# TYPE {total} counter",
        ]
        for (route, key, status), count in sorted(self.counts.items()):
            labels = f'route="{route}",key="{key}",status="{status}"'
            lines.append(f"{total}{{{labels}}} {count}")
        name = "gmail_token_store_http_request_duration_seconds"
        lines += [f"# HELP {name} Request latency by route.", f"# TYPE {name} histogram"]
        for route, buckets in sorted(self.buckets.items()):
            count = 0
            for bound, within in zip((*BUCKETS, float("inf")), buckets, strict=True):
                count += within
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{name}_bucket{{route="{route}",le="{le}"}} {count}')
            lines.append(f'{name}_sum{{route="{route}"}} {self.sums[route]:.6f}')
            lines.append(f'{name}_count{{route="{route}"}} {count}')
        return "\n".join(lines) + "\n"


class Observed:
    """ASGI middleware: each request's route, key, status and time, counted and logged."""

    def __init__(self, app: ASGIApp, requests: Requests) -> None:
        self._app = app
        self._requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - began
            # The route's path template, set by Starlette's router: never the request's
            # path or query (no user id, code or signature in a label or a log line).
            matched = scope.get("route")
            route = matched.path if isinstance(matched, Route) else "(other)"
            key = scope.get("state", {}).get("api_key", "-")
            self._requests.observe(route, key, status, seconds)
            access_log.info(
                "%s %s %d key=%s %.1fms", scope["method"], route, status, key, seconds * 1000
            )


def ops_routes(store: AsyncTokenStore, requests: Requests) -> list[Route]:
    health: dict[str, Any] = {"text": "", "at": float("-inf")}

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        try:
            await store.check(_PROBE)
        except TokenStoreError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_request: Request) -> Response:
        if time.monotonic() - health["at"] > HEALTH_EVERY:
            try:
                stream = store.iter_statuses(needs_attention=True)  # flat memory, sieved
                async for _ in stream:
                    pass
                health["text"] = exposition(stream.summary)
                health["at"] = time.monotonic()
            except TokenStoreError:
                pass  # the request families still tell something
        return PlainTextResponse(
            health["text"] + requests.exposition(), media_type="text/plain; version=0.0.4"
        )

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
