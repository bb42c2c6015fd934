"""auth-server's API, served by the library: check and refresh, for services in any language.

    GET  /api/gmail/check/{user_id}     auth-server's check JSON
    POST /api/gmail/refresh/{user_id}   auth-server's refresh JSON (the access token)

Every route needs `Authorization: Bearer <key>`; a key named `name=key:check` may only
check. Without a key, or with a wrong one, the answer is the same 401 whatever the user
(no oracle). Errors say who must act: 404 not found, 409 the user must consent again (with
a reconnect link), 503 with `Retry-After` when trying later may work, 500 when an operator
must look. The bodies hold auth-server's keys and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import (
    AsyncTokenStore,
    InsufficientScopesError,
    InvalidUserIdError,
    ReauthRequiredError,
    TokenNotFoundError,
    TokenStoreError,
)

#: The keys of auth-server's answers: the API's bodies hold these and nothing else.
CHECK_KEYS = (
    "status",
    "user_id",
    "email",
    "has_token",
    "has_access_token",
    "has_refresh_token",
    "has_oauth_config",
    "is_expired",
    "remaining_seconds",
    "needs_refresh",
)
REFRESH_KEYS = ("status", "user_id", "email", "expires_in", "access_token")
#: A request's whole work (a refresh waits for the row lock and the token endpoint) is
#: bounded by this (seconds); past it the answer is 503 with Retry-After.
REQUEST_TIMEOUT = 45.0
RETRY_AFTER = "5"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Starlette's JSON (compact, UTF-8, no NaN) from one encoder, not a new one per answer.
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_UNAUTHORIZED = {"error": "unauthorized", "description": "a valid API key is required"}


class _Json(JSONResponse):
    """JSONResponse's bytes, encoded by `_ENCODE`."""

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    scope: str  # "all" or "check"


@dataclass(frozen=True)
class ApiKeys:
    """The API's keys, by name; compared in constant time, never logged or shown.

    Parsed from `name=key,name=key:check` (`GMAIL_TOKEN_STORE_API_KEYS`) or a file with one
    such entry per line (`#` comments): a key limited to `check` cannot refresh.
    """

    _digests: Mapping[bytes, ApiKey] = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> ApiKeys:
        digests: dict[bytes, ApiKey] = {}
        names: set[str] = set()
        for line in re.split(r"[,\n]", text):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            name, sep, key = entry.partition("=")
            scope = "all"
            if key.endswith(":check"):
                key, scope = key.removesuffix(":check"), "check"
            if not sep or not _NAME.fullmatch(name) or name in names:
                raise ValueError(
                    "API keys are name=key or name=key:check, names unique (letters, digits, _ . -)"
                )
            if len(key) < 24:
                raise ValueError(f"the API key named {name} is shorter than 24 characters")
            names.add(name)
            digests[hashlib.sha256(key.encode()).digest()] = ApiKey(name, scope)
        if not digests:
            raise ValueError("no API key given")
        return cls(digests)

    def identify(self, authorization: str | None) -> ApiKey | None:
        """The key an `Authorization` header carries, or None."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found = None
        for digest, key in self._digests.items():  # every key compared, in constant time
            if hmac.compare_digest(digest, presented):
                found = key
        return found

    def __repr__(self) -> str:
        names = ", ".join(sorted(key.name for key in self._digests.values()))
        return f"<ApiKeys {names}>"


def api_routes(
    store: AsyncTokenStore,
    keys: ApiKeys,
    *,
    cache_seconds: float,
    link_for: Callable[[str], str] | None,
) -> list[Route]:
    """The two routes over `store`; `link_for(user_id)` makes the reconnect link of a 409."""

    async def check(request: Request) -> Response:
        return await _answer(request, "check", lambda uid: _checked(store, uid, cache_seconds))

    async def refresh(request: Request) -> Response:
        return await _answer(request, "all", lambda uid: _refreshed(store, uid, cache_seconds))

    async def _answer(request: Request, needs: str, work: Callable[[str], Any]) -> Response:
        key = keys.identify(request.headers.get("authorization"))
        if key is None:
            return _Json(_UNAUTHORIZED, status_code=401, headers=_CHALLENGE)
        request.state.api_key = key.name
        if needs == "all" and key.scope == "check":
            return _Json(
                {"error": "forbidden", "description": "this API key may only check"},
                status_code=403,
            )
        user_id = request.path_params["user_id"]
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                body: dict[str, Any] = await work(user_id)
        except TimeoutError:
            return _retry_later(user_id, "the request took too long")
        except TokenStoreError as exc:
            return _failure(user_id, exc, link_for)
        return _Json(body)

    return [
        Route("/api/gmail/check/{user_id}", check, methods=["GET"]),
        Route("/api/gmail/refresh/{user_id}", refresh, methods=["POST"]),
    ]


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="gmail-token-store"'}


# The answers' keys are attributes of the results (what `to_dict()` holds under them):
# read alone, without building the whole dict (times and scopes formatted) on every answer.
async def _checked(store: AsyncTokenStore, user_id: str, cache_seconds: float) -> dict[str, Any]:
    status = await store.check(user_id, max_age=cache_seconds)
    if status.status == "not_found":
        raise TokenNotFoundError(status.user_id)
    return {key: getattr(status, key) for key in CHECK_KEYS}


async def _refreshed(store: AsyncTokenStore, user_id: str, cache_seconds: float) -> dict[str, Any]:
    result = await store.refresh(user_id, max_age=cache_seconds)
    return {key: getattr(result, key) for key in REFRESH_KEYS}


def _failure(user_id: str, exc: TokenStoreError, link_for: Callable[[str], str] | None) -> Response:
    if isinstance(exc, InvalidUserIdError):
        return _Json(
            {"status": "invalid", "user_id": None, "error": "user_id must be a UUID"},
            status_code=400,
        )
    uid = getattr(exc, "user_id", user_id)
    if isinstance(exc, TokenNotFoundError):
        return _Json({"status": "not_found", "user_id": uid}, status_code=404)
    if isinstance(exc, ReauthRequiredError | InsufficientScopesError):
        return _Json(
            {
                "status": "reauth_required",
                "user_id": uid,
                "email": getattr(exc, "email", None),
                "reason": str(exc),
                "reconnect_link": link_for(uid) if link_for is not None else None,
            },
            status_code=409,
        )
    if exc.retryable:
        return _retry_later(uid, str(exc))
    return _Json({"status": "error", "user_id": uid, "reason": str(exc)}, status_code=500)


def _retry_later(user_id: str, reason: str) -> Response:
    return _Json(
        {"status": "retry_later", "user_id": user_id, "reason": reason},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER},
    )
