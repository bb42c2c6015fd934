"""The web re-consent's decisions: signed links and state, PKCE, the ID token, the account.

Everything a browser sends is hostile, so nothing here trusts it: a reconnect link and a
consent `state` are HMAC-signed (keys derived from the service's secret, one per use),
expire, and say whom they are for; the state is also bound to the browser that started
the consent (a random value kept in a cookie, of which the state carries only a hash)
and is used once. The PKCE verifier and the OpenID nonce are derived from the state's
own random part, so nothing secret is stored anywhere between start and callback.

The ID token comes straight from the token endpoint over TLS (OIDC Core 3.1.3.7: TLS
stands in for the signature then); its claims are checked here. No I/O, no clock: the
time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from .errors import TokenStoreError
from .record import ACCOUNT_ID_KEY
from .text import printable

#: Google's authorization endpoint (the consent screen).
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/v2/auth"
#: What an ID token's `iss` is, from Google: both forms occur.
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
#: The scopes asked for besides the service's: the ID token names the account, and RISC
#: events cover only grants that include them.
IDENTITY_SCOPES = ("openid", "email")

#: A consent's state is good for this long (seconds): the time to pass Google's screens.
STATE_LIFETIME = 600.0
#: Clock difference tolerated on an ID token's `exp` / `iat` (seconds).
CLOCK_LEEWAY = 120.0


class ConsentError(TokenStoreError):
    """The consent did not give a grant; nothing was written. `page` names what to show.

    `retry_until` (epoch seconds) is how long a fresh reconnect link for `user_id` may be
    offered: the end of the link the consent started from, so that no page extends a link
    (None: offer none, e.g. for a consent the service started itself).
    """

    page = "failed"

    def __init__(self, message: str, *, user_id: str | None = None) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.retry_until: int | None = None


class ConsentLinkError(ConsentError):
    """The link or the consent's state is not valid: tampered, expired, already used, or
    from another browser. A fresh link (or a fresh start) is needed."""

    page = "expired"


class ConsentDeclinedError(ConsentError):
    """The user declined (Google answered `access_denied`)."""

    page = "declined"


class WrongAccountError(ConsentError):
    """A Google account other than the one the user connected before consented."""

    page = "wrong-account"

    def __init__(self, message: str, *, user_id: str, expected: str | None) -> None:
        super().__init__(message, user_id=user_id)
        #: The email (or account id) of the account that is expected, for the page.
        self.expected = expected


class ConsentScopeError(ConsentError):
    """The user did not grant every scope the service needs (granular consent)."""

    page = "permission-missing"

    def __init__(self, message: str, *, user_id: str, missing: Sequence[str]) -> None:
        super().__init__(message, user_id=user_id)
        self.missing_scopes = tuple(missing)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _utf8(text: str) -> bytes:
    """Any text a browser (or Google) sent, as bytes: never an error, lone surrogates too."""
    return text.encode("utf-8", "surrogatepass")


def same(ours: str, theirs: str) -> bool:
    """A constant-time comparison that takes any text (`hmac.compare_digest` raises
    TypeError for non-ASCII strings: a hostile value would be a server error)."""
    return hmac.compare_digest(_utf8(ours), _utf8(theirs))


class Signer:
    """HMAC-SHA256 with keys derived from one secret, one per purpose (a link's signature
    cannot pass as a state's, and no derived value reveals another)."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < 32:
            raise ValueError("the consent secret must be at least 32 bytes (e.g. 43 random base64)")
        self._root = raw

    def __repr__(self) -> str:
        return "<Signer secret=***>"

    def key(self, purpose: str) -> bytes:
        return hmac.new(self._root, b"gmail-token-store/" + purpose.encode(), "sha256").digest()

    def sign(self, purpose: str, message: str) -> str:
        return _b64(hmac.new(self.key(purpose), _utf8(message), "sha256").digest())

    def valid(self, purpose: str, message: str, signature: str) -> bool:
        return same(self.sign(purpose, message), signature)


# --- the reconnect link ----------------------------------------------------------------------


def _link_purpose(allow_change: bool) -> str:
    """The key a link is signed with: an account-change link has its own, so a link's
    holder can neither add the change to a plain link nor drop it from a changing one."""
    return "link+change" if allow_change else "link"


def reconnect_link(
    signer: Signer, start_url: str, user_id: str, *, expires: int, allow_change: bool = False
) -> str:
    """A link to the start route for `user_id`, signed, valid until `expires` (epoch s);
    with `allow_change`, it may connect another Google account than the row's.

    It names the user and carries a signature, never a secret: anyone holding it can only
    start a consent that must be finished with the user's own Google account (any account,
    with `allow_change`).
    """
    query = {"user_id": user_id, "expires": str(expires)}
    if allow_change:
        query["change"] = "1"
    query["sig"] = signer.sign(_link_purpose(allow_change), f"{user_id}|{expires}")
    separator = "&" if urlsplit(start_url).query else "?"
    return start_url + separator + urlencode(query)


@dataclass(frozen=True, slots=True)
class Link:
    """A verified reconnect link: whom it is for, until when, and whether it lets another
    Google account in."""

    user_id: str
    expires: int
    allow_change: bool


def check_link(signer: Signer, params: Mapping[str, str], *, now: float) -> Link:
    """The reconnect link in a start route's query; ConsentLinkError if it is tampered or
    expired."""
    user_id, expires, signature = (params.get(key, "") for key in ("user_id", "expires", "sig"))
    change = params.get("change")
    if not (user_id and expires.isascii() and expires.isdigit() and signature) or len(user_id) > 64:
        raise ConsentLinkError("this link is incomplete or not one of ours")
    if change not in (None, "1"):
        raise ConsentLinkError("this link is not one of ours")
    allow_change = change == "1"
    if not signer.valid(_link_purpose(allow_change), f"{user_id}|{expires}", signature):
        raise ConsentLinkError("this link's signature is not valid")
    if int(expires) < now:
        raise ConsentLinkError("this link has expired", user_id=user_id)
    return Link(user_id, int(expires), allow_change)


# --- the consent's state, bound to one browser, used once -------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentStart:
    """What the start route does: send the browser to `authorization_url`, and remember
    `binding` in the browser (a cookie) until the callback."""

    authorization_url: str
    user_id: str
    binding: str = field(repr=False)
    expires: int


@dataclass(frozen=True, slots=True)
class ConsentState:
    """A verified state: whom the consent is for, and its one-time values."""

    user_id: str
    nonce: str = field(repr=False)  # the state's own random part (and its single-use key)
    expires: int
    allow_change: bool
    #: The email the consenting account must have, when the starter said so.
    expect_email: str | None = None
    #: The end of the reconnect link the consent started from (None: started without one).
    link_expires: int | None = None

    def pkce_verifier(self, signer: Signer) -> str:
        """The PKCE code verifier (RFC 7636: 43 characters), derived, never stored."""
        return signer.sign("pkce", self.nonce)

    def oidc_nonce(self, signer: Signer) -> str:
        return signer.sign("nonce", self.nonce)[:32]


def pkce_challenge(verifier: str) -> str:
    """S256: base64url(sha256(verifier)), unpadded."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _binding_hash(binding: str) -> str:
    return _b64(hashlib.sha256(_utf8(binding)).digest())[:22]


def new_state(
    signer: Signer,
    user_id: str,
    *,
    now: float,
    allow_change: bool = False,
    expect_email: str | None = None,
    link_expires: int | None = None,
) -> tuple[str, ConsentState, str]:
    """(the `state` parameter, its ConsentState, the browser binding to keep)."""
    nonce = _b64(secrets.token_bytes(18))
    binding = _b64(secrets.token_bytes(18))
    expires = int(now + STATE_LIFETIME)
    payload: dict[str, Any] = {"u": user_id, "n": nonce, "b": _binding_hash(binding), "e": expires}
    if allow_change:
        payload["c"] = 1
    if expect_email:
        payload["x"] = expect_email[:320]
    if link_expires is not None:
        payload["l"] = int(link_expires)
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    state = f"{body}.{signer.sign('state', body)}"
    pending = ConsentState(user_id, nonce, expires, allow_change, payload.get("x"), link_expires)
    return state, pending, binding


def check_state(signer: Signer, state: str, binding: str | None, *, now: float) -> ConsentState:
    """Verify a callback's `state`: signature, expiry, and the browser it was started in.

    Raises:
        ConsentLinkError: tampered, expired, or not started in this browser (no binding
            cookie, or another one). Single use is the caller's (`ConsentFlow`).
    """
    body, _, signature = state.partition(".")
    if not body or not signature or len(state) > 1024:
        raise ConsentLinkError("the consent's state is missing or malformed")
    if not signer.valid("state", body, signature):
        raise ConsentLinkError("the consent's state is not one of ours")
    try:
        payload: dict[str, Any] = json.loads(_unb64(body))
        user_id, nonce = str(payload["u"]), str(payload["n"])
        expected_binding, expires = str(payload["b"]), int(payload["e"])
    except (ValueError, KeyError, TypeError):
        raise ConsentLinkError("the consent's state is malformed") from None
    if expires < now:
        raise ConsentLinkError("the consent took too long; start again", user_id=user_id)
    if not binding or not same(_binding_hash(binding), expected_binding):
        raise ConsentLinkError(
            "this consent was started in another browser (or its cookie is gone); start again",
            user_id=user_id,
        )
    expect, link_expires = payload.get("x"), payload.get("l")
    return ConsentState(
        user_id,
        nonce,
        expires,
        bool(payload.get("c")),
        expect if isinstance(expect, str) else None,
        link_expires if isinstance(link_expires, int) else None,
    )


def authorization_url(
    auth_uri: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    challenge: str,
    nonce: str,
    login_hint: str | None,
) -> str:
    """Google's authorization URL: offline access, a consent prompt (so a refresh token
    always comes back), granted scopes included, PKCE S256, the OpenID nonce."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(dict.fromkeys([*scopes, *IDENTITY_SCOPES])),
        "state": state,
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "nonce": nonce,
    }
    if login_hint:
        query["login_hint"] = login_hint
    separator = "&" if urlsplit(auth_uri).query else "?"
    return auth_uri + separator + urlencode(query)


# --- the answer: the ID token, the scopes, the account ----------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """The Google account that consented, from the ID token's checked claims."""

    sub: str
    email: str


def identity(id_token: object, *, client_id: str, nonce: str, now: float, user_id: str) -> Identity:
    """Check an ID token's claims (not its signature: see the module docstring).

    Raises:
        ConsentError: missing, malformed, another issuer or audience, expired, a nonce that
            is not ours, an unverified or missing email.
    """
    if not isinstance(id_token, str) or id_token.count(".") != 2 or len(id_token) > 16_384:
        raise ConsentError("Google's answer has no ID token", user_id=user_id)
    try:
        claims = json.loads(_unb64(id_token.split(".")[1]))
    except ValueError:
        raise ConsentError("Google's ID token cannot be read", user_id=user_id) from None
    if not isinstance(claims, dict):
        raise ConsentError("Google's ID token cannot be read", user_id=user_id)
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    problems = {
        "its issuer is not Google": claims.get("iss") not in GOOGLE_ISSUERS,
        "it is for another client": client_id not in audiences
        or claims.get("azp", client_id) != client_id,
        "it has expired": not isinstance(claims.get("exp"), int | float)
        or claims["exp"] + CLOCK_LEEWAY < now,
        "it is not the answer to this consent (nonce)": not isinstance(claims.get("nonce"), str)
        or not same(nonce, claims["nonce"]),
        "it names no account": not isinstance(claims.get("sub"), str) or not claims["sub"],
        "its email is missing or not verified": not isinstance(claims.get("email"), str)
        or claims.get("email_verified") not in (True, "true"),
    }
    for problem, found in problems.items():
        if found:
            raise ConsentError(f"Google's ID token was refused: {problem}", user_id=user_id)
    return Identity(sub=claims["sub"][:255], email=claims["email"][:320])


def missing_scopes(required: Sequence[str], granted: Sequence[str]) -> list[str]:
    return [scope for scope in required if scope not in set(granted)]


def account_refusal(
    metadata: Mapping[str, Any] | None,
    row_email: str | None,
    who: Identity,
    *,
    expect_email: str | None = None,
) -> str | None:
    """Why `who` may not replace the grant a row holds, or None.

    By Google account id once the row records one (emails can change hands), else by
    email (case-insensitive); a row that names neither accepts any account, unless the
    consent's starter named the email it expects (`expect_email`).
    """
    if expect_email and expect_email.casefold() != who.email.casefold():
        return f"{printable(who.email, 80)} is not {printable(expect_email, 80)}"
    known = (metadata or {}).get(ACCOUNT_ID_KEY)
    if isinstance(known, str) and known:
        if known != who.sub:
            return "another Google account than the one this user connected before"
        return None
    if row_email and row_email.casefold() != who.email.casefold():
        return f"{printable(who.email, 80)} is not {printable(row_email, 80)}"
    return None


def expected_account(metadata: Mapping[str, Any] | None, row_email: str | None) -> str | None:
    """What the consent page should say the user must sign in as (email first)."""
    return row_email or ((metadata or {}).get(ACCOUNT_ID_KEY) or None)
