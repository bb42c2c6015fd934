"""The token-endpoint exchange (RFC 6749 section 6), written once for both stores.

A refresh is one form POST: `grant_type=refresh_token` with the refresh token and the
OAuth client. This module builds it, classifies every answer and decides retries; it does
no I/O. `exchange()` yields `PostForm` and `Sleep` effects that the sync shell performs
with `httpx.Client` and the async shell with `httpx.AsyncClient`, and times itself by the
injected clock.

Bounded, because a refresh runs while the row lock is held: each request gets at most
`http_timeout`, the whole refresh `3 x http_timeout` across at most three requests, and only
passing failures are retried (no answer, a timeout, 5xx, 408, 429, an answer that is not
JSON). A non-JSON 502 is an outage, not a revoked grant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .clock import Clock
from .effects import Flow, HttpAnswer, PostForm, Sleep
from .events import EVENT_ERRORS, EventError
from .record import MAX_COLUMN_CHARS, MAX_SCOPES
from .writes import unstorable

#: The longest `scope` an answer may carry to be written back (a quarter of a column).
MAX_SCOPE_CHARS = MAX_COLUMN_CHARS // 4

_REVOKED = frozenset({"invalid_grant"})
_CLIENT_REJECTED = frozenset({"invalid_client", "unauthorized_client", "deleted_client"})
_TRANSIENT_CODES = frozenset({"server_error", "temporarily_unavailable", "internal_failure"})
_TRANSIENT_STATUS = frozenset({408, 429})

#: HTTP requests per refresh at most.
MAX_ATTEMPTS = 3
_BACKOFF_SECONDS = (0.25, 0.5)
#: Google documents one hour; used when an answer carries no usable expires_in.
DEFAULT_LIFETIME = 3600.0
#: A lifetime above this is not believed (a week).
_MAX_LIFETIME = 7 * 86_400.0
#: A token answer is a few hundred bytes; a longer one is not read further.
MAX_ANSWER_BYTES = 64 * 1024
#: Google's tokens are a few hundred characters (it documents up to 2 KiB): a longer one
#: could not be stored in a row that stays readable (see `record.MAX_COLUMN_CHARS`).
MAX_TOKEN_CHARS = 8 * 1024


@dataclass(frozen=True, slots=True)
class Grant:
    """A token answer: the new access token, a refresh token if a new one was sent (a
    rotation, or the grant of a code exchange), the granted scopes, an ID token if any."""

    access_token: str = field(repr=False)
    rotated_refresh_token: str | None = field(repr=False)
    expires_in: float
    scopes: tuple[str, ...] | None
    id_token: str | None = field(default=None, repr=False)


FailureKind = Literal["revoked", "client", "transient", "rejected"]


class EndpointError(Exception):
    """The token endpoint did not give a token; `kind` says who has to act.

    `error` and `description` may come from the endpoint: untrusted text, escaped wherever
    it is shown (the public errors do it). `cause` names the failure from a fixed set.
    """

    def __init__(
        self, kind: FailureKind, error: str, description: str = "", *, cause: EventError
    ) -> None:
        super().__init__(kind)
        self.kind: FailureKind = kind
        self.error = error
        self.description = description
        self.cause: EventError = cause


class EndpointUnreachable(Exception):
    """Thrown into `exchange` by a shell when a request got no answer at all."""

    def __init__(self, reason: str, *, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause: EventError = "timeout" if timed_out else "unreachable"


def refresh_form(refresh_token: str, client_id: str, client_secret: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "client_id": client_id,
        "client_secret": client_secret,
        "refresh_token": refresh_token,
    }


def _lifetime(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return DEFAULT_LIFETIME
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_LIFETIME
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_LIFETIME
    return min(seconds, _MAX_LIFETIME)


def _decode(body: bytes) -> dict[str, Any] | None:
    if len(body) > MAX_ANSWER_BYTES:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def _granted_scopes(scope: Any) -> tuple[str, ...] | None:
    """The answer's scopes, or None (the row's stay) when a row could not hold them: the
    grant stays usable whatever the endpoint answers."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_CHARS:
        return None
    scopes = tuple(scope.split())
    if len(scopes) > MAX_SCOPES or unstorable(scope):
        return None
    return scopes


def classify_answer(  # noqa: PLR0911 - one return per kind of answer
    answer: HttpAnswer, refresh_token: str | None
) -> Grant | EndpointError:
    """Turn one answer of the token endpoint into a Grant or the error it means."""
    data = _decode(answer.body)
    status = answer.status
    if data is not None and status == 200:
        access_token = data.get("access_token")
        if isinstance(access_token, str) and access_token:
            new_refresh = data.get("refresh_token")
            rotated = (
                new_refresh
                if isinstance(new_refresh, str) and new_refresh and new_refresh != refresh_token
                else None
            )
            for token in (access_token, rotated):
                if token is not None and (len(token) > MAX_TOKEN_CHARS or unstorable(token)):
                    return EndpointError(
                        "rejected",
                        "the token endpoint answered a token that cannot be stored",
                        cause="bad_answer",
                    )
            id_token = data.get("id_token")
            return Grant(
                access_token=access_token,
                rotated_refresh_token=rotated,
                expires_in=_lifetime(data.get("expires_in")),
                scopes=_granted_scopes(data.get("scope")),
                id_token=id_token if isinstance(id_token, str) else None,
            )
    raw_error = data.get("error") if data is not None else None
    error = raw_error if isinstance(raw_error, str) else None
    raw_description = data.get("error_description") if data is not None else None
    description = raw_description if isinstance(raw_description, str) else ""
    if error in _REVOKED:
        return EndpointError("revoked", error, description, cause="invalid_grant")
    if error in _CLIENT_REJECTED:
        cause: EventError = error if error in EVENT_ERRORS else "invalid_client"  # type: ignore[assignment]
        return EndpointError("client", error, description, cause=cause)
    if data is None:
        size = " too long" if len(answer.body) > MAX_ANSWER_BYTES else " that is not JSON"
        return EndpointError(
            "transient",
            f"the token endpoint answered HTTP {status} with a body{size}",
            cause="bad_answer",
        )
    if status >= 500 or status in _TRANSIENT_STATUS or error in _TRANSIENT_CODES:
        what = f"HTTP {status}" + (f" {error}" if error else "")
        return EndpointError(
            "transient",
            f"the token endpoint answered {what}",
            description,
            cause="rate_limited" if status == 429 else "server_error",
        )
    if error is None and status == 200:
        return EndpointError(
            "transient", "the token endpoint answered without an access token", cause="bad_answer"
        )
    return EndpointError("rejected", error or f"HTTP {status}", description, cause="rejected")


def exchange(
    token_uri: str,
    refresh_token: str,
    client_id: str,
    client_secret: str,
    *,
    http_timeout: float,
    clock: Clock,
) -> Flow[Grant]:
    """Exchange a refresh token for an access token within `3 x http_timeout` seconds.

    Raises:
        EndpointError: kind "revoked" (invalid_grant), "client" (the OAuth client was
            refused), "transient" (no answer, 5xx, 429, non-JSON, budget used up) or
            "rejected" (any other refusal).
    """
    form = refresh_form(refresh_token, client_id, client_secret)
    return (
        yield from _post(token_uri, form, refresh_token, http_timeout=http_timeout, clock=clock)
    )


def exchange_code(
    token_uri: str,
    code: str,
    *,
    verifier: str,
    redirect_uri: str,
    client_id: str,
    client_secret: str,
    http_timeout: float,
    clock: Clock,
) -> Flow[Grant]:
    """Exchange an authorization code (with its PKCE verifier) for a grant, as `exchange`
    does a refresh token: the same budget, retries and answers (`invalid_grant` here means
    the code was refused: used, expired, or for another client, redirect or verifier)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    return (yield from _post(token_uri, form, None, http_timeout=http_timeout, clock=clock))


def _post(
    token_uri: str,
    form: dict[str, str],
    refresh_token: str | None,
    *,
    http_timeout: float,
    clock: Clock,
) -> Flow[Grant]:
    deadline = clock.monotonic() + 3 * http_timeout
    failure = EndpointError("transient", "the refresh time budget is used up", cause="timeout")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            break
        try:
            answer = yield from PostForm(
                token_uri, form, timeout=min(http_timeout, remaining), max_bytes=MAX_ANSWER_BYTES
            )
        except EndpointUnreachable as exc:
            failure = EndpointError("transient", exc.reason, cause=exc.cause)
        else:
            outcome = classify_answer(answer, refresh_token)
            if isinstance(outcome, Grant):
                return outcome
            if outcome.kind != "transient":
                raise outcome
            failure = outcome
        pause = _BACKOFF_SECONDS[min(attempt - 1, len(_BACKOFF_SECONDS) - 1)]
        if attempt == MAX_ATTEMPTS or deadline - clock.monotonic() <= pause:
            break
        yield from Sleep(pause)
    raise failure
