"""Token endpoint calls: bounded time, retries only for transient failures, classification.

google-auth does the OAuth work (`google.oauth2.reauth.refresh_grant`). Two of its defaults
must not leak in here, because a refresh runs while we hold the row lock: the requests
transport waits 120 s per attempt, and a 5xx answer is retried with sleeps. So every HTTP
request goes through `_BudgetedRequest`, which caps each attempt at `http_timeout` and the
whole refresh at a fixed budget, and records the last answer so that the failure can be
classified by what the endpoint actually said (google-auth reports a non-JSON 502 as a
non-retryable RefreshError; it is an outage, not a revoked grant).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport
import google.auth.transport.requests
import requests
import requests.adapters
import requests.utils
from google.oauth2 import reauth

from ._record import utc_naive

logger = logging.getLogger("gmail_token_store")

_GOOGLE_TOKEN_HOSTS = frozenset(
    {"oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com"}
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_REVOKED = frozenset({"invalid_grant"})
_CLIENT_REJECTED = frozenset({"invalid_client", "unauthorized_client", "deleted_client"})
_TRANSIENT_CODES = frozenset({"server_error", "temporarily_unavailable", "internal_failure"})
_TRANSIENT_STATUS = frozenset({408, 429})

#: HTTP requests per refresh at most, google-auth's own retries included.
_MAX_ATTEMPTS = 3
_BACKOFF_SECONDS = (0.25, 0.5)
#: Google documents one hour; used only when an answer carries no expires_in.
_DEFAULT_LIFETIME = timedelta(seconds=3600)


def token_uri_refusal(token_uri: str, allowed_hosts: frozenset[str]) -> str | None:
    """Return why `token_uri` must not receive a client secret, or None when it may.

    https on Google's token hosts or an allowed host; http or https on loopback for
    emulators and tests. A tampered row must not be able to send the secret elsewhere.
    """
    try:
        parts = urlsplit(token_uri)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "token_uri is not a valid URL"
    if parts.scheme == "https" and (host in _GOOGLE_TOKEN_HOSTS or host in allowed_hosts):
        return None
    if parts.scheme in ("http", "https") and host in _LOOPBACK_HOSTS:
        return None
    return (
        f"token_uri host {host or '(none)'!r} over {parts.scheme or '(no scheme)'} is not allowed "
        "(Google's token hosts over https, loopback, or allowed_token_hosts)"
    )


@dataclass(frozen=True, slots=True)
class Grant:
    """A successful refresh: the new access token, a rotated refresh token if one was sent."""

    access_token: str = field(repr=False)
    rotated_refresh_token: str | None = field(repr=False)
    expiry: datetime
    scopes: tuple[str, ...] | None


FailureKind = Literal["revoked", "client", "transient", "rejected"]


class EndpointError(Exception):
    """The token endpoint did not give a token; `kind` says who has to act."""

    def __init__(self, kind: FailureKind, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.kind: FailureKind = kind
        self.error = error
        self.description = description


class _BudgetedRequest(google.auth.transport.Request):
    """A google-auth transport whose requests share one deadline; remembers the last answer."""

    def __init__(
        self,
        inner: google.auth.transport.requests.Request,
        http_timeout: float,
        deadline: float,
        *,
        proxies: dict[str, str],
    ) -> None:
        self._inner = inner
        self._proxies = proxies
        self._http_timeout = http_timeout
        self._deadline = deadline
        self.attempts = 0
        self.budget_exhausted = False
        self.last_status: int | None = None
        self.last_json: dict[str, Any] | None = None
        self.previous_failure: EndpointError | None = None

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,  # noqa: ARG002 - replaced by our own, see the class
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        self.last_status = None
        self.last_json = None
        remaining = self.remaining()
        if remaining <= 0 or self.attempts >= _MAX_ATTEMPTS:
            self.budget_exhausted = True
            raise google.auth.exceptions.TransportError("the refresh time budget is used up")
        self.attempts += 1
        response = self._inner(
            url,
            method=method,
            body=body,
            headers=headers,
            timeout=min(self._http_timeout, remaining),
            proxies=self._proxies,
            **kwargs,
        )
        self.last_status = response.status
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            decoded = json.loads(response.data)
            if isinstance(decoded, dict):
                self.last_json = decoded
        answer: google.auth.transport.Response = response
        return answer


class TokenEndpoint:
    """Refreshes grants with google-auth over one shared requests session."""

    def __init__(self, *, http_timeout: float, max_connections: int) -> None:
        self.http_timeout = http_timeout
        #: The longest a whole refresh may take, retries and backoff included.
        self.budget = 3 * http_timeout
        self._session = requests.Session()
        # requests re-reads proxy and CA-bundle variables from the environment on every
        # request (a third of a refresh's CPU time in refresh-all). Read them once here,
        # with requests' own rules, and pass them on each request instead.
        self._session.trust_env = False
        self._session.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._proxies: dict[str, dict[str, str]] = {}
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(max_connections, 1)
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._transport = google.auth.transport.requests.Request(self._session)

    def close(self) -> None:
        self._session.close()

    def _proxies_for(self, url: str) -> dict[str, str]:
        proxies = self._proxies.get(url)
        if proxies is None:
            if len(self._proxies) > 100:
                self._proxies.clear()
            proxies = self._proxies[url] = requests.utils.get_environ_proxies(url)
        return proxies

    def refresh(
        self, *, token_uri: str, refresh_token: str, client_id: str, client_secret: str
    ) -> Grant:
        """Exchange a refresh token for an access token within `budget` seconds.

        Raises:
            EndpointError: kind "revoked" (invalid_grant), "client" (the OAuth client was
                refused), "transient" (no answer, 5xx, 429, non-JSON) or "rejected" (any
                other refusal).
        """
        request = _BudgetedRequest(
            self._transport,
            self.http_timeout,
            time.monotonic() + self.budget,
            proxies=self._proxies_for(token_uri),
        )
        while True:
            try:
                access_token, new_refresh, expiry, response, _rapt = reauth.refresh_grant(
                    request, token_uri, refresh_token, client_id, client_secret
                )
            except google.auth.exceptions.RefreshError as exc:
                failure = _classify(request)
                if failure.kind != "transient":
                    raise failure from exc
            except google.auth.exceptions.TransportError as exc:
                if request.budget_exhausted:
                    raise request.previous_failure or EndpointError(
                        "transient", "the refresh time budget is used up"
                    ) from exc
                failure = EndpointError("transient", _transport_reason(exc))
            else:
                return Grant(
                    access_token=access_token,
                    rotated_refresh_token=new_refresh if new_refresh != refresh_token else None,
                    expiry=utc_naive(expiry) if expiry else _now_naive() + _DEFAULT_LIFETIME,
                    scopes=tuple(response["scope"].split())
                    if isinstance(response.get("scope"), str)
                    else None,
                )
            # Transient. google-auth already retried 500/503/504/408/429 answers itself (they
            # count as attempts here); we retry the rest (no answer, a non-JSON 502) while
            # attempts and budget remain.
            request.previous_failure = failure
            pause = _BACKOFF_SECONDS[min(request.attempts - 1, len(_BACKOFF_SECONDS) - 1)]
            if request.attempts >= _MAX_ATTEMPTS or request.remaining() <= pause:
                raise failure
            time.sleep(pause)


def _now_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _transport_reason(exc: google.auth.exceptions.TransportError) -> str:
    cause = exc.__cause__ or (exc.args[0] if exc.args else None)
    if isinstance(cause, requests.Timeout):
        return "the token endpoint did not answer in time"
    if isinstance(cause, requests.ConnectionError):
        return "the token endpoint could not be reached"
    text = str(exc)
    return text if "budget" in text else "the token endpoint could not be reached"


def _classify(request: _BudgetedRequest) -> EndpointError:
    status = request.last_status
    data = request.last_json or {}
    error = data.get("error") if isinstance(data.get("error"), str) else None
    description = data.get("error_description")
    description = description if isinstance(description, str) else ""
    if error in _REVOKED:
        return EndpointError("revoked", error, description)
    if error in _CLIENT_REJECTED:
        return EndpointError("client", error, description)
    if (
        status is None
        or status >= 500
        or status in _TRANSIENT_STATUS
        or error in _TRANSIENT_CODES
        or request.last_json is None
    ):
        what = f"HTTP {status}" if status else "no answer"
        if error:
            what += f" {error}"
        elif request.last_json is None and status is not None:
            what += " with a body that is not JSON"
        return EndpointError("transient", f"the token endpoint answered {what}", description)
    if error is None and status == 200:
        return EndpointError("transient", "the token endpoint answered without an access token")
    return EndpointError("rejected", error or f"HTTP {status}", description)
