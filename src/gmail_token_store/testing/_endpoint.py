"""A fake Google for tests, over real HTTP: the token endpoint, and this module's routes.

The token endpoint records every request and answers what a test scripts: success,
`invalid_grant`, client errors, 5xx, 429, a non-JSON 502, slowly, or not at all; it can rotate
refresh tokens and revoke the one each rotation replaced. The rest of Google a consent flow
and a RISC receiver talk to is in `_consent_page` (the consent page), `_accounts` (accounts,
codes, tokens, revocation), `_jwt` (keys, JWKS, ID tokens) and `_risc_issuer`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

from ._accounts import (
    OPENID,
    FakeAccount,
    InvalidGrantError,
    Ledger,
    new_refresh_token,
    new_sub,
)
from ._consent_page import ConsentError, ConsentPage, drive_consent, error_page
from ._http import Answer, Request, Server
from ._jwt import KeySet, id_token
from ._replies import Reply, TokenRequest, error_answer
from ._risc_issuer import GOOGLE_RISC_ISSUER, RiscEvent, risc_configuration, security_event_claims


class FakeTokenEndpoint:
    """Google's token endpoint on http://127.0.0.1:<port>/token, and the rest of a fake Google.

    Token requests are answered, in order of precedence: replies queued with `script()`,
    `invalid_grant` for a revoked refresh token (`revoke()`, the revocation endpoint, the
    refresh-token limit), then `default` (Reply.OK unless changed). Each answer waits
    `latency` seconds first. Use as a context manager, or call `close()`.

    Args:
        expires_in: lifetime in seconds of the access tokens it issues.
        latency: seconds to wait before each token answer.
        rotate_refresh_tokens: send a new refresh token with every refresh.
        revoke_rotated: with rotation, answer `invalid_grant` to the refresh token each
            rotation replaced (an endpoint that allows one live refresh token per grant).
        granted_scopes: the `scope` to put in refresh answers (None: the scopes of a refresh
            token the fake issued, and none for any other).
        max_hang: seconds a HANG reply holds the connection at most.
        accounts: the Google accounts on the consent page (default: one, user@gmail.com).
        refresh_token_limit: live refresh tokens per account and client; one more revokes
            the oldest (Google's limit is 100).
        risc_issuer: the `issuer` of the RISC discovery document and `iss` of its tokens.

    `on_request`, if set, is called with the refresh token of each refresh request before
    it is answered (in the server's thread): a test can stop a database at that moment.
    """

    def __init__(
        self,
        *,
        expires_in: int = 3599,
        latency: float = 0.0,
        rotate_refresh_tokens: bool = False,
        revoke_rotated: bool = False,
        granted_scopes: Sequence[str] | None = None,
        max_hang: float = 60.0,
        accounts: Sequence[FakeAccount] | None = None,
        refresh_token_limit: int = 100,
        risc_issuer: str = GOOGLE_RISC_ISSUER,
    ) -> None:
        self.expires_in = expires_in
        self.latency = latency
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.revoke_rotated = revoke_rotated
        self.on_request: Callable[[str | None], None] | None = None
        self.granted_scopes = list(granted_scopes) if granted_scopes is not None else None
        self.default = Reply.OK
        self.max_hang = max_hang
        self.risc_issuer = risc_issuer
        if accounts is None:
            accounts = [FakeAccount("user@gmail.com", new_sub())]
        self._ledger = Ledger(accounts, refresh_token_limit=refresh_token_limit)
        self._consent = ConsentPage(self._ledger)
        self._keys = KeySet()
        self._lock = threading.Lock()
        self._scripted: list[Reply] = []
        self._requests: list[TokenRequest] = []
        self._release = threading.Event()
        # The fake's paths, all in one place (Google's own paths where it has them).
        self._routes: dict[tuple[str, str], Callable[[Request], Answer]] = {
            ("POST", "/token"): self._token,
            ("GET", "/auth"): lambda request: Answer.page(200, self._consent.show(request.query)),
            ("POST", "/auth"): lambda request: Answer.redirect(self._consent.decide(request.body)),
            ("POST", "/revoke"): self._revocation,
            ("GET", "/oauth2/v3/certs"): lambda _: Answer.json(200, self._keys.jwks()),
            ("GET", "/.well-known/risc-configuration"): (
                lambda _: Answer.json(200, self._risc_configuration())
            ),
        }
        self._server = Server(self)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        """The consent page (GET: the form; POST: the decision, a redirect)."""
        return f"{self.base_url}/auth"

    @property
    def revoke_uri(self) -> str:
        """The revocation endpoint: POST token=<refresh or access token>."""
        return f"{self.base_url}/revoke"

    @property
    def jwks_uri(self) -> str:
        """The public keys of ID tokens and security event tokens (Google's path)."""
        return f"{self.base_url}/oauth2/v3/certs"

    @property
    def risc_config_url(self) -> str:
        """The RISC discovery document, naming `risc_issuer` and `jwks_uri`."""
        return f"{self.base_url}/.well-known/risc-configuration"

    @property
    def requests(self) -> list[TokenRequest]:
        """Every token request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    def refresh_requests(self) -> list[TokenRequest]:
        """The refresh_token grants received so far."""
        return [r for r in self.requests if r.grant_type == "refresh_token"]

    @property
    def accounts(self) -> tuple[FakeAccount, ...]:
        return self._ledger.accounts

    def add_account(
        self, email: str, *, sub: str | None = None, email_verified: bool = True
    ) -> FakeAccount:
        """Add a Google account to the consent page (a 21-digit account id unless given)."""
        return self._ledger.add_account(FakeAccount(email, sub or new_sub(), email_verified))

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then fall back as usual."""
        with self._lock:
            self._scripted.extend(replies)

    def revoke(self, refresh_token: str) -> None:
        """Answer `invalid_grant` to every later refresh with this refresh token."""
        self._ledger.revoke(refresh_token)

    def is_revoked(self, token: str) -> bool:
        """Whether a refresh token, or an access token (or its refresh token), is revoked."""
        return self._ledger.is_revoked(token)

    def revoked_tokens(self) -> list[str]:
        """The tokens the revocation endpoint accepted, as they were sent, in order."""
        return self._ledger.revoked_at_endpoint()

    def release(self) -> None:
        """Let requests held by HANG go (their connections are closed without an answer)."""
        self._release.set()

    def client_config(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """A Google "installed app" client secrets document that points at this endpoint."""
        return {
            "installed": {
                "client_id": client_id,
                "client_secret": client_secret,
                "auth_uri": self.auth_uri,
                "token_uri": self.token_uri,
                "redirect_uris": ["http://localhost"],
            }
        }

    def consent(
        self,
        authorization_url: str,
        *,
        account: FakeAccount | str | None = None,
        scopes: Sequence[str] | None = None,
        decision: Literal["allow", "deny"] = "allow",
    ) -> str:
        """Act as the user's browser on the consent page; return the redirect, not followed.

        Args:
            account: the account (or its email) to choose; None: the preselected one.
            scopes: the boxes to leave ticked; None: every requested scope.
        """
        if not authorization_url.startswith(self.auth_uri + "?"):
            raise ValueError(f"not an authorization URL of this endpoint: {self.auth_uri}?...")
        email = account.email if isinstance(account, FakeAccount) else account
        return drive_consent(authorization_url, account=email, scopes=scopes, decision=decision)

    def security_event(
        self,
        event_type: RiscEvent | str,
        subject: Mapping[str, Any] | None,
        *,
        audience: str,
        jti: str | None = None,
        iat: int | None = None,
        extra: Mapping[str, Any] | None = None,
        sign_with: Literal["issuer", "foreign", "none"] = "issuer",
        kid: str | None = None,
    ) -> str:
        """A security event token as Google pushes it: RS256, `kid` header, no `exp`.

        Args:
            subject: `iss_sub(account)`, `oauth_token(token, alg)`, any dict, or None (a
                verification event has none).
            audience: the receiver's OAuth client id.
            extra: more members of the event (`reason`, `state`).
            sign_with: "foreign" signs with a key that is not in the JWKS, "none" sends an
                unsigned token (`alg: none`): forgeries a receiver must refuse.
            kid: the header's key id instead of the signing key's (with "foreign": a
                forgery naming the published key).
        """
        claims = security_event_claims(
            event_type,
            subject,
            issuer=self.risc_issuer,
            audience=audience,
            jti=jti,
            iat=iat,
            extra=extra,
        )
        return self._keys.sign(claims, sign_with=sign_with, kid=kid)

    def rotate_signing_key(self) -> str:
        """Sign from now on with a new key, published next to the old ones; return its kid."""
        return self._keys.rotate()

    def close(self) -> None:
        self._release.set()
        self._server.close()

    def __enter__(self) -> FakeTokenEndpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeTokenEndpoint {self.token_uri} requests={len(self._requests)}>"

    # --- the HTTP side -----------------------------------------------------------------------

    def serve(self, request: Request) -> Answer:
        """Answer one HTTP request (the server's threads call this)."""
        route = self._routes.get((request.method, request.path))
        if route is None:
            return Answer.json(404, {"error": "not_found"})
        try:
            return route(request)
        except ConsentError as exc:
            return Answer.page(400, error_page(str(exc)))

    def _risc_configuration(self) -> dict[str, Any]:
        return risc_configuration(
            issuer=self.risc_issuer, jwks_uri=self.jwks_uri, base_url=self.base_url
        )

    def _revocation(self, request: Request) -> Answer:
        # Google takes the token in the body or in the query string.
        token = request.form.get("token") or parse_qs(request.query).get("token", [""])[0]
        if not token:
            return Answer.json(400, {"error": "invalid_request", "error_description": "token"})
        if not self._ledger.revoke_at_endpoint(token):
            return Answer.json(
                400, {"error": "invalid_token", "error_description": "Token expired or revoked"}
            )
        return Answer.json(200, {})

    def _choose(self, refresh_token: str | None) -> Reply:
        with self._lock:
            if self._scripted:
                return self._scripted.pop(0)
        if refresh_token is not None and self._ledger.is_revoked(refresh_token):
            return Reply.INVALID_GRANT
        return self.default

    def _token(self, request: Request) -> Answer:
        """Choose, record and answer one token request."""
        form = request.form
        grant_type = form.get("grant_type", "")
        refresh_token = form.get("refresh_token")
        hook = self.on_request
        if hook is not None and grant_type == "refresh_token":
            hook(refresh_token)
        reply = self._choose(refresh_token)
        if self.latency:
            time.sleep(self.latency)
        description: str | None = None
        issued: _Issued | None = None
        if reply is Reply.OK and grant_type in ("authorization_code", "refresh_token"):
            try:
                issued = self._issue(grant_type, form)
            except InvalidGrantError as exc:
                reply, description = Reply.INVALID_GRANT, str(exc)
        elif reply is Reply.OK:
            reply = Reply.UNAUTHORIZED_CLIENT
        answer = Answer.json(200, issued.body) if issued else error_answer(reply, description)
        body = issued.body if issued else {}
        with self._lock:
            self._requests.append(
                TokenRequest(
                    grant_type=grant_type,
                    client_id=form.get("client_id"),
                    refresh_token=refresh_token,
                    client_secret=form.get("client_secret"),
                    code=form.get("code"),
                    reply=reply,
                    received_at=time.time(),
                    issued_access_token=body.get("access_token"),
                    issued_refresh_token=body.get("refresh_token"),
                    issued_id_token=body.get("id_token"),
                    redirect_uri=form.get("redirect_uri"),
                    code_verifier=form.get("code_verifier"),
                    account=issued.account if issued else None,
                    scopes=issued.scopes if issued else None,
                )
            )
        if reply is Reply.HANG:
            self._release.wait(self.max_hang)
        return answer

    def _issue(self, grant_type: str, form: dict[str, str]) -> _Issued:
        """The success body of a code exchange or a refresh; raises InvalidGrantError."""
        access_token = "ya29.fake-" + secrets.token_urlsafe(24)
        body: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }
        account: FakeAccount | None
        nonce: str | None = None
        new_refresh: str | None = None
        if grant_type == "authorization_code":
            code = self._ledger.redeem(
                form.get("code", ""),
                client_id=form.get("client_id"),
                redirect_uri=form.get("redirect_uri"),
                verifier=form.get("code_verifier"),
            )
            account, client_id, scopes = code.account, code.client_id, code.scopes
            nonce = code.nonce
            # Google: a refresh token "the first time" (no live grant), or with prompt=consent.
            if code.offline and (
                code.consent_prompted or not self._ledger.has_grant(account, client_id)
            ):
                new_refresh = self._ledger.issue_refresh_token(account, client_id, scopes)
            body["scope"] = " ".join(scopes)
        else:
            old_refresh = form.get("refresh_token") or ""
            grant = self._ledger.refresh_grant(old_refresh)
            account = grant.account if grant else None
            client_id = grant.client_id if grant else form.get("client_id", "")
            scopes = grant.scopes if grant else ()
            if self.rotate_refresh_tokens:
                new_refresh = (
                    self._ledger.issue_refresh_token(grant.account, grant.client_id, grant.scopes)
                    if grant
                    else new_refresh_token()
                )
                if self.revoke_rotated and old_refresh:
                    self._ledger.revoke(old_refresh)
            if self.granted_scopes is not None:
                body["scope"] = " ".join(self.granted_scopes)
            elif grant:
                body["scope"] = " ".join(grant.scopes)
        if new_refresh is not None:
            body["refresh_token"] = new_refresh
        self._ledger.note_access_token(
            access_token,
            new_refresh or form.get("refresh_token"),
            (account.sub, client_id) if account else None,
        )
        if account is not None and OPENID in scopes:
            body["id_token"] = id_token(
                self._keys,
                account=account,
                client_id=client_id,
                scopes=scopes,
                access_token=access_token,
                nonce=nonce,
            )
        granted = tuple(body["scope"].split()) if "scope" in body else None
        return _Issued(body, account, granted)


@dataclass(frozen=True, slots=True)
class _Issued:
    body: dict[str, Any] = field(repr=False)
    account: FakeAccount | None
    scopes: tuple[str, ...] | None
