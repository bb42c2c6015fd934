"""The fake Google's accounts and what it issued to them: codes, refresh and access tokens.

Standard library only and no I/O: the HTTP side (`_endpoint`, `_http`) asks the ledger and
turns its answers into Google's. The rules are Google's where tests can tell: an authorization
code is redeemed once, by the client it was issued to, with the redirect URI and the PKCE
verifier of its request; at most `refresh_token_limit` refresh tokens live per account and
client, and issuing one more revokes the oldest without a word; revoking an access token
revokes the refresh token it came from.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

OPENID = "openid"
#: Google grants the `email` claim for either spelling of the scope.
EMAIL_SCOPES = frozenset({"email", "https://www.googleapis.com/auth/userinfo.email"})
#: Google's refresh tokens start so; the fake revokes such tokens even if it never saw them,
#: as it answers refreshes for them (rows made by `insert_grant` hold such tokens).
REFRESH_TOKEN_PREFIX = "1//"
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636, section 4.1


@dataclass(frozen=True, slots=True)
class FakeAccount:
    """A Google account of the fake: its email and its account id (the ID token's `sub`)."""

    email: str
    sub: str
    email_verified: bool = True


def new_sub() -> str:
    """A fresh account id shaped like Google's: 21 digits."""
    return "1" + "".join(secrets.choice("0123456789") for _ in range(20))


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + "fake-refresh-" + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class CodeGrant:
    """What one authorization code stands for: who consented, for which request, to what."""

    client_id: str
    redirect_uri: str
    account: FakeAccount
    scopes: tuple[str, ...]
    offline: bool  # access_type=offline
    consent_prompted: bool  # prompt=consent
    code_challenge: str | None = field(repr=False)
    code_challenge_method: str | None
    nonce: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """What a refresh token the fake issued stands for."""

    account: FakeAccount
    client_id: str
    scopes: tuple[str, ...]


class InvalidGrantError(Exception):
    """An authorization code that cannot be redeemed; the message is Google's description."""


class Ledger:
    """Accounts, and every code and token the fake issued or revoked (thread-safe)."""

    def __init__(self, accounts: Iterable[FakeAccount], *, refresh_token_limit: int) -> None:
        if refresh_token_limit < 1:
            raise ValueError(f"refresh_token_limit must be at least 1, not {refresh_token_limit}")
        self.refresh_token_limit = refresh_token_limit
        self._lock = threading.Lock()
        self._accounts: dict[str, FakeAccount] = {}
        for account in accounts:
            self.add_account(account)
        self._codes: dict[str, CodeGrant] = {}
        self._refresh: dict[str, RefreshGrant] = {}
        # Live refresh tokens per (account id, client id), oldest first: the limit's queue.
        self._live: dict[tuple[str, str], list[str]] = {}
        # access token -> its refresh token, and the (account id, client id) of its grant
        self._access: dict[str, tuple[str | None, tuple[str, str] | None]] = {}
        self._revoked: set[str] = set()
        self._revoked_at_endpoint: list[str] = []

    # --- accounts ---------------------------------------------------------------------------

    @property
    def accounts(self) -> tuple[FakeAccount, ...]:
        with self._lock:
            return tuple(self._accounts.values())

    def add_account(self, account: FakeAccount) -> FakeAccount:
        with self._lock:
            if account.email.lower() in self._accounts:
                raise ValueError(f"the fake already has an account {account.email}")
            self._accounts[account.email.lower()] = account
        return account

    def account(self, email_or_sub: str) -> FakeAccount | None:
        """The account with this email (any case) or account id, if any."""
        with self._lock:
            found = self._accounts.get(email_or_sub.lower())
            if found is None:
                found = next((a for a in self._accounts.values() if a.sub == email_or_sub), None)
            return found

    # --- authorization codes ----------------------------------------------------------------

    def issue_code(self, grant: CodeGrant) -> str:
        code = "4/0fake-code-" + secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = grant
        return code

    def redeem(
        self, code: str, *, client_id: str | None, redirect_uri: str | None, verifier: str | None
    ) -> CodeGrant:
        """The code's grant, once: any attempt uses the code up, failed ones included.

        Raises:
            InvalidGrantError: unknown or used code, another client or redirect URI, a
                missing or wrong PKCE verifier.
        """
        with self._lock:
            grant = self._codes.pop(code, None)
        if grant is None:
            raise InvalidGrantError("Malformed auth code.")
        if client_id != grant.client_id:
            raise InvalidGrantError("Unauthorized")
        if redirect_uri != grant.redirect_uri:
            raise InvalidGrantError("Bad Request: redirect_uri does not match the code's")
        if grant.code_challenge is not None:
            if not verifier:
                raise InvalidGrantError("Missing code verifier.")
            if not _VERIFIER.fullmatch(verifier):
                raise InvalidGrantError("Invalid code verifier.")
            derived = (
                s256_challenge(verifier) if grant.code_challenge_method == "S256" else verifier
            )
            if derived != grant.code_challenge:
                raise InvalidGrantError("Invalid code verifier.")
        return grant

    # --- refresh and access tokens ----------------------------------------------------------

    def issue_refresh_token(
        self, account: FakeAccount, client_id: str, scopes: Sequence[str]
    ) -> str:
        """A new refresh token; past the limit, the oldest live one of this account and client
        is revoked (Google says nothing: the next refresh with it gets invalid_grant)."""
        token = new_refresh_token()
        with self._lock:
            self._refresh[token] = RefreshGrant(account, client_id, tuple(scopes))
            live = self._live.setdefault((account.sub, client_id), [])
            live.append(token)
            while len(live) > self.refresh_token_limit:
                self._revoked.add(live.pop(0))
        return token

    def refresh_grant(self, refresh_token: str | None) -> RefreshGrant | None:
        """What a refresh token the fake issued stands for (None for any other token)."""
        with self._lock:
            return self._refresh.get(refresh_token or "")

    def granted_scopes(self, account: FakeAccount, client_id: str) -> tuple[str, ...]:
        """What this account granted this client so far: the scopes of its live refresh
        tokens, in order (empty once the grant is revoked)."""
        with self._lock:
            live = self._live.get((account.sub, client_id), [])
            scopes = (scope for token in live for scope in self._refresh[token].scopes)
            return tuple(dict.fromkeys(scopes))

    def has_grant(self, account: FakeAccount, client_id: str) -> bool:
        """Whether this account has a live refresh token for this client."""
        with self._lock:
            return bool(self._live.get((account.sub, client_id)))

    def note_access_token(
        self, access_token: str, refresh_token: str | None, grant: tuple[str, str] | None
    ) -> None:
        """Remember where an access token came from: its refresh token, and the (account id,
        client id) of the grant when the fake knows it."""
        with self._lock:
            self._access[access_token] = (refresh_token, grant)

    def revoke(self, refresh_token: str) -> None:
        """Revoke this one refresh token (a test's `revoke()`: nothing else goes with it)."""
        with self._lock:
            self._revoked.add(refresh_token)
            grant = self._refresh.get(refresh_token)
            if grant is not None:
                live = self._live.get((grant.account.sub, grant.client_id), [])
                if refresh_token in live:
                    live.remove(refresh_token)

    def is_revoked(self, token: str) -> bool:
        """A revoked refresh token, or an access token revoked (itself or its refresh token)."""
        with self._lock:
            return self._is_revoked_locked(token)

    def _is_revoked_locked(self, token: str) -> bool:
        refresh_token, _ = self._access.get(token, (None, None))
        return token in self._revoked or refresh_token in self._revoked

    def revoke_at_endpoint(self, token: str) -> bool:
        """Revoke what the revocation endpoint was sent; False: unknown or already revoked.

        Google's revocation removes the whole grant: "all OAuth 2.0 scopes previously granted
        to a project, invalidating any issued access or refresh tokens". For a token the fake
        issued, every refresh and access token of that account and client goes (the fake has
        no projects: a client stands for its project); for another refresh token (a row made
        by `insert_grant`), that token and the access tokens it gave.
        """
        with self._lock:
            if self._is_revoked_locked(token):
                return False
            refresh_token, grant = self._access.get(token, (None, None))
            if token in self._access:
                self._revoked.add(token)
            elif token in self._refresh:
                refresh_token = token
                found = self._refresh[token]
                grant = (found.account.sub, found.client_id)
            elif token.startswith(REFRESH_TOKEN_PREFIX):
                refresh_token = token
            else:
                return False
            if refresh_token is not None:
                self._revoked.add(refresh_token)
            if grant is not None:
                self._revoked.update(self._live.pop(grant, []))
                self._revoked.update(a for a, (_, g) in self._access.items() if g == grant)
            self._revoked_at_endpoint.append(token)
            return True

    def revoked_at_endpoint(self) -> list[str]:
        with self._lock:
            return list(self._revoked_at_endpoint)


def s256_challenge(verifier: str) -> str:
    """PKCE's S256 code challenge: base64url(sha256(verifier)) without padding (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
