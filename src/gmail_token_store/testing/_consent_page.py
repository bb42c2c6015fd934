"""The fake Google's consent page at /auth: the request checked, a form, the user's decision.

GET /auth checks the authorization request as Google does; a bad one gets a 400 page and no
redirect (Google never sends a browser back to a redirect URI it could not check). A good one
is kept server-side under a random id and shown as a form: one radio per account, one ticked
checkbox per requested scope (granular consent: the user may untick some), Allow and Deny.
POST /auth answers the choice with a 302 to the redirect URI: `code` (and `state`) or
`error=access_denied`. `drive_consent` is a test's browser for that page.
"""

from __future__ import annotations

import html
import http.client
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from ._accounts import CodeGrant, FakeAccount, Ledger

#: Redirect URIs must be on these hosts: the fake only ever sends a browser to loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_PROMPTS = frozenset({"none", "consent", "select_account"})
_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636, section 4.2
_FORM_FIELDS = frozenset({"request", "account", "scope", "decision"})


class ConsentError(Exception):
    """A request the page refuses (400); the message is shown on the page."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """One checked authorization request, as GET /auth received it."""

    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None = field(repr=False)
    code_challenge: str | None = field(repr=False)
    code_challenge_method: str | None  # "S256" or "plain" when a challenge was sent
    nonce: str | None = field(repr=False)
    login_hint: str | None
    access_type: str  # "online" (Google's default) or "offline"
    prompt: tuple[str, ...]
    include_granted_scopes: bool


def parse_auth_request(query: str) -> AuthRequest:
    """Check an authorization request's query string like Google's endpoint does.

    Raises:
        ConsentError: a missing, repeated or invalid parameter.
    """
    values = parse_qs(query, keep_blank_values=True)
    repeated = sorted(name for name, items in values.items() if len(items) > 1)
    if repeated:
        raise ConsentError(f"invalid_request: parameter {repeated[0]} sent more than once")
    params = {name: items[0] for name, items in values.items()}
    for name in ("response_type", "client_id", "redirect_uri", "scope"):
        if not params.get(name):
            raise ConsentError(f"invalid_request: missing required parameter {name}")
    if params["response_type"] != "code":
        raise ConsentError("unsupported_response_type: only response_type=code is supported")
    redirect = urlsplit(params["redirect_uri"])
    if redirect.scheme not in ("http", "https") or redirect.hostname not in LOOPBACK_HOSTS:
        raise ConsentError("redirect_uri_mismatch: redirect_uri must be http(s) on loopback")
    if redirect.fragment:
        raise ConsentError("invalid_request: redirect_uri must not have a fragment")
    access_type = params.get("access_type", "online")
    if access_type not in ("online", "offline"):
        raise ConsentError("invalid_request: access_type must be online or offline")
    prompt = tuple(params.get("prompt", "").split())
    if not _PROMPTS.issuperset(prompt) or ("none" in prompt and len(prompt) > 1):
        raise ConsentError("invalid_request: prompt must be none, or consent and select_account")
    include = params.get("include_granted_scopes", "false")
    if include not in ("true", "false"):
        raise ConsentError("invalid_request: include_granted_scopes must be true or false")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if method is not None and challenge is None:
        raise ConsentError("invalid_request: code_challenge_method without code_challenge")
    if challenge is not None:
        method = method or "plain"  # RFC 7636's default
        if method not in ("S256", "plain") or not _CHALLENGE.fullmatch(challenge):
            raise ConsentError("invalid_request: invalid code_challenge or code_challenge_method")
    return AuthRequest(
        client_id=params["client_id"],
        redirect_uri=params["redirect_uri"],
        scopes=tuple(dict.fromkeys(params["scope"].split())),
        state=params.get("state"),
        code_challenge=challenge,
        code_challenge_method=method,
        nonce=params.get("nonce"),
        login_hint=params.get("login_hint"),
        access_type=access_type,
        prompt=prompt,
        include_granted_scopes=include == "true",
    )


def with_query(url: str, params: Mapping[str, str | None]) -> str:
    """`url` with these parameters added to the query it may already have."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(name, value) for name, value in params.items() if value is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


class ConsentPage:
    """GET and POST /auth; the requests shown and not yet answered are kept here."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._pending: dict[str, AuthRequest] = {}

    def show(self, query: str) -> str:
        """The page for one authorization request (raises ConsentError for a bad one)."""
        request = parse_auth_request(query)
        request_id = secrets.token_urlsafe(16)
        with self._lock:
            self._pending[request_id] = request
        accounts = self._ledger.accounts
        hinted = self._ledger.account(request.login_hint) if request.login_hint else None
        chosen = hinted if hinted in accounts else (accounts[0] if accounts else None)
        return render_page(request_id, request, accounts, chosen)

    def decide(self, body: str) -> str:
        """The redirect for the user's choice; each shown request is answered once."""
        form = parse_qs(body, keep_blank_values=True)
        unknown = sorted(set(form) - _FORM_FIELDS)
        if unknown:
            raise ConsentError(f"invalid_request: unexpected field {unknown[0]}")
        with self._lock:
            request = self._pending.pop(_one(form, "request") or "", None)
        if request is None:
            raise ConsentError("invalid_request: unknown or already answered consent request")
        decision = _one(form, "decision")
        if decision == "deny":
            return with_query(
                request.redirect_uri, {"error": "access_denied", "state": request.state}
            )
        if decision != "allow":
            raise ConsentError("invalid_request: decision must be allow or deny")
        email = _one(form, "account") or ""
        account = self._ledger.account(email)
        if account is None or account.email.lower() != email.lower():
            raise ConsentError("invalid_request: no such account")
        ticked = set(form.get("scope", []))
        if not ticked.issubset(request.scopes):
            raise ConsentError("invalid_scope: a scope that was not requested")
        scopes = [scope for scope in request.scopes if scope in ticked]
        if request.include_granted_scopes:  # incremental authorization: add earlier grants
            earlier = self._ledger.granted_scopes(account, request.client_id)
            scopes += [scope for scope in earlier if scope not in scopes]
        code = self._ledger.issue_code(
            CodeGrant(
                client_id=request.client_id,
                redirect_uri=request.redirect_uri,
                account=account,
                scopes=tuple(scopes),
                offline=request.access_type == "offline",
                consent_prompted="consent" in request.prompt,
                code_challenge=request.code_challenge,
                code_challenge_method=request.code_challenge_method,
                nonce=request.nonce,
            )
        )
        return with_query(
            request.redirect_uri, {"code": code, "state": request.state, "scope": " ".join(scopes)}
        )


def _one(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise ConsentError(f"invalid_request: field {name} sent more than once")
    return values[0] if values else None


def render_page(
    request_id: str,
    request: AuthRequest,
    accounts: Sequence[FakeAccount],
    chosen: FakeAccount | None,
) -> str:
    """The consent form; every value from the request is escaped."""
    e = html.escape
    radios = "".join(
        f'<label><input type="radio" name="account" value="{e(a.email)}"'
        f"{' checked' if a == chosen else ''}> {e(a.email)}</label><br>\n"
        for a in accounts
    )
    boxes = "".join(
        f'<label><input type="checkbox" name="scope" value="{e(scope)}" checked> '
        f"{e(scope)}</label><br>\n"
        for scope in request.scopes
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Sign in - Fake Google</title></head><body>\n"
        f"<h1>Choose an account</h1><p>to continue to {e(request.client_id)}</p>\n"
        '<form method="post" action="/auth">\n'
        f'<input type="hidden" name="request" value="{e(request_id)}">\n'
        f"<fieldset><legend>Account</legend>\n{radios or 'No accounts.'}</fieldset>\n"
        f"<fieldset><legend>Allow access to</legend>\n{boxes}</fieldset>\n"
        '<button type="submit" name="decision" value="deny">Cancel</button>\n'
        '<button type="submit" name="decision" value="allow">Allow</button>\n'
        "</form></body></html>\n"
    )


def error_page(message: str) -> bytes:
    e = html.escape
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Error 400</title></head><body><h1>Error 400</h1><p>{e(message)}</p>"
        "</body></html>\n"
    ).encode()


class _FormReader(HTMLParser):
    """The forms, inputs and buttons of a page, as a browser would submit them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.buttons: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {"form": self.forms, "input": self.inputs, "button": self.buttons}.get(tag)
        if found is not None:
            found.append(dict(attrs))


def drive_consent(
    authorization_url: str,
    *,
    account: str | None,
    scopes: Sequence[str] | None,
    decision: str,
) -> str:
    """Be the browser: GET the page, check its form, POST the choice; return the Location.

    Raises:
        ValueError: an account, scope or decision the page does not offer.
        AssertionError: the page is not the consent form, or the answer is not a redirect.
    """
    parts = urlsplit(authorization_url)
    status, page, _ = _request(parts.netloc, "GET", f"{parts.path}?{parts.query}")
    if status != 200:
        raise AssertionError(f"the consent page answered {status}: {page[:300]}")
    reader = _FormReader()
    reader.feed(page)
    if len(reader.forms) != 1 or (reader.forms[0].get("method") or "").lower() != "post":
        raise AssertionError("the consent page has no single POST form")
    action = reader.forms[0].get("action") or parts.path
    hidden = [
        (i["name"] or "", i.get("value") or "") for i in reader.inputs if i.get("type") == "hidden"
    ]
    radios = [i for i in reader.inputs if i.get("type") == "radio" and i.get("name") == "account"]
    boxes = [i for i in reader.inputs if i.get("type") == "checkbox" and i.get("name") == "scope"]
    decisions = [b.get("value") for b in reader.buttons if b.get("name") == "decision"]
    if decision not in decisions:
        raise ValueError(f"the consent page offers the decisions {decisions}, not {decision!r}")
    emails = [r.get("value") or "" for r in radios]
    if account is None:
        account = next((r.get("value") for r in radios if "checked" in r), None)
    elif account not in emails:
        raise ValueError(f"the consent page offers {emails}, not {account!r}: add_account() it")
    offered = [b.get("value") or "" for b in boxes]
    if scopes is None:
        scopes = [b.get("value") or "" for b in boxes if "checked" in b]
    elif not set(scopes).issubset(offered):
        raise ValueError(f"the consent page offers the scopes {offered}, not {list(scopes)}")
    fields = [*hidden, *([("account", account)] if account else [])]
    fields += [("scope", scope) for scope in scopes] + [("decision", decision)]
    status, page, location = _request(parts.netloc, "POST", action, urlencode(fields))
    if status != 302 or location is None:
        raise AssertionError(f"the consent page answered the choice with {status}: {page[:300]}")
    return location


def _request(
    netloc: str, method: str, path: str, body: str | None = None
) -> tuple[int, str, str | None]:
    connection = http.client.HTTPConnection(netloc, timeout=30)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("Location")
    finally:
        connection.close()
