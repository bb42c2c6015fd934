"""The web re-consent: a link any user can follow to connect (or reconnect) Gmail.

    flow = ConsentFlow.from_client_secrets(store, "client_secret.json",
                                           redirect_uri="https://svc.example/auth/gmail/callback",
                                           secret=os.environ["GMAIL_TOKEN_STORE_SECRET"])
    link = flow.reconnect_link(user_id)            # put it in an email or a chat message
    start = flow.start(request.query_params)       # the start route: redirect, keep a cookie
    result = flow.complete(request.query_params, binding=cookie)   # the callback route

Framework-neutral: `ConsentFlow` for a `TokenStore` (Flask, Django), `AsyncConsentFlow` for
an `AsyncTokenStore` (Starlette, FastAPI; `gmail_token_store.web` serves the routes).
What it checks, and why, is in `_core.consent`; the grant is saved under the row lock,
refusing (by Google account id, else email) an account other than the row's unless the
link or the caller allows a change. Nothing is written on any refusal.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from google.oauth2.credentials import Credentials

from ._async_store import AsyncTokenStore
from ._base import new_grant
from ._core import consent as decide
from ._core import flows
from ._core.consent import (
    GOOGLE_AUTH_URI,
    ConsentDeclinedError,
    ConsentError,
    ConsentLinkError,
    ConsentScopeError,
    ConsentStart,
    ConsentState,
    Identity,
    Link,
    Signer,
    WrongAccountError,
)
from ._core.effects import Flow
from ._core.errors import ConfigurationError, parse_user_id
from ._core.exchange import EndpointError, Grant, exchange_code
from ._core.record import (
    ACCOUNT_ID_KEY,
    CONSENTED_AT_KEY,
    GMAIL_SEND,
    GOOGLE_TOKEN_URI,
    VERIFIED_KEY,
    TokenRecord,
    from_epoch,
)
from ._core.text import printable
from ._options import read_small_file
from ._store import TokenStore

__all__ = [
    "AsyncConsentFlow",
    "ConsentDeclinedError",
    "ConsentError",
    "ConsentFlow",
    "ConsentLinkError",
    "ConsentResult",
    "ConsentScopeError",
    "ConsentStart",
    "WrongAccountError",
    "reconnect_link",
]

#: How long a reconnect link is good for by default (seconds): a week, long enough for
#: an email to be read.
LINK_LIFETIME = 7 * 86_400.0
#: The routes `gmail_token_store.web` serves, relative to the service's public URL.
START_PATH = "/auth/gmail/passport"
CALLBACK_PATH = "/auth/gmail/callback"


@dataclass(frozen=True, slots=True)
class ConsentResult:
    """A consent that was saved: whose grant, which Google account, which scopes."""

    user_id: str
    email: str
    google_account_id: str
    scopes: tuple[str, ...]
    #: True when the grant replaced one of another Google account (allowed explicitly).
    account_changed: bool


def reconnect_link(
    user_id: str, *, secret: str, public_url: str, valid_for: float = LINK_LIFETIME
) -> str:
    """A signed reconnect link to `public_url`'s start route, without a ConsentFlow (for
    notices and the command: they need no OAuth client)."""
    start = public_url.rstrip("/") + START_PATH
    return decide.reconnect_link(
        Signer(secret), start, parse_user_id(user_id), expires=int(time.time() + valid_for)
    )


class _Consent:
    """What both flows share: configuration, links, states, checks. No I/O."""

    def __init__(
        self,
        store: TokenStore | AsyncTokenStore,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        secret: str,
        scopes: Sequence[str] = (GMAIL_SEND,),
        auth_uri: str = GOOGLE_AUTH_URI,
        token_uri: str = GOOGLE_TOKEN_URI,
        start_url: str | None = None,
    ) -> None:
        for name, value in (("client_id", client_id), ("client_secret", client_secret)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if isinstance(scopes, str) or not scopes:
            raise ValueError("scopes must be a non-empty list of scope URLs")
        refusal = store.token_uri_problem(token_uri)
        if refusal:
            raise ConfigurationError(f"the consent's token_uri is refused: {refusal}")
        self._store = store
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = tuple(scopes)
        self.auth_uri = auth_uri
        self.token_uri = token_uri
        self.start_url = start_url or _start_url_for(redirect_uri)
        #: Cookies only over https (a browser drops Secure cookies on plain http).
        self.secure_cookies = urlsplit(redirect_uri).scheme == "https"
        self._signer = Signer(secret)
        # Used states, until they expire: a callback works once (per process; across
        # processes the cleared cookie and Google's single-use code stop a replay).
        self._used: dict[str, float] = {}
        self._used_lock = threading.Lock()

    @classmethod
    def from_client_secrets(
        cls, store: Any, path: str | Path, *, redirect_uri: str, secret: str, **options: Any
    ) -> Any:
        """A flow for the web client in a Google Cloud console client secrets file."""
        client = _web_client(Path(path))
        return cls(
            store,
            client_id=str(client["client_id"]),
            client_secret=str(client["client_secret"]),
            redirect_uri=redirect_uri,
            secret=secret,
            auth_uri=str(client.get("auth_uri") or GOOGLE_AUTH_URI),
            token_uri=str(client.get("token_uri") or GOOGLE_TOKEN_URI),
            **options,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} client_id={self.client_id!r} {self.redirect_uri!r}>"

    def reconnect_link(
        self, user_id: str, *, valid_for: float = LINK_LIFETIME, allow_account_change: bool = False
    ) -> str:
        """A signed link to the start route, valid for `valid_for` seconds, carrying no
        secret; `allow_account_change` lets it connect another Google account than the
        row's (say, the user's address changed)."""
        uid = parse_user_id(user_id)
        expires = int(time.time() + valid_for)
        return decide.reconnect_link(
            self._signer, self.start_url, uid, expires=expires, allow_change=allow_account_change
        )

    def _link(self, params: Mapping[str, str]) -> Link:
        link = decide.check_link(self._signer, params, now=time.time())
        try:
            return Link(parse_user_id(link.user_id), link.expires, link.allow_change)
        except ValueError:
            raise ConsentLinkError("this link names no valid user") from None

    def _started(
        self,
        user_id: str,
        row: TokenRecord | None,
        allow_change: bool,
        expect_email: str | None = None,
        link: Link | None = None,
    ) -> ConsentStart:
        state, pending, binding = decide.new_state(
            self._signer,
            user_id,
            now=time.time(),
            allow_change=allow_change,
            expect_email=expect_email,
            link_expires=link.expires if link else None,
        )
        hint = expect_email
        if row is not None and not hint:
            hint = row.google_account_id or row.email
        url = decide.authorization_url(
            self.auth_uri,
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scopes=self.scopes,
            state=state,
            challenge=decide.pkce_challenge(pending.pkce_verifier(self._signer)),
            nonce=pending.oidc_nonce(self._signer),
            login_hint=hint,
        )
        return ConsentStart(url, user_id, binding, pending.expires)

    def _callback_state(self, params: Mapping[str, str], binding: str | None) -> ConsentState:
        """The verified state of a callback, used up (a second use is refused); what Google
        answered is `_code`'s."""
        pending = decide.check_state(
            self._signer, params.get("state", ""), binding, now=time.time()
        )
        now = time.monotonic()
        with self._used_lock:
            for nonce in [n for n, until in self._used.items() if until < now]:
                del self._used[nonce]
            if pending.nonce in self._used:
                raise ConsentLinkError(
                    "this consent was already used; start again", user_id=pending.user_id
                )
            self._used[pending.nonce] = now + decide.STATE_LIFETIME
        return pending

    @staticmethod
    def _code(pending: ConsentState, params: Mapping[str, str]) -> str:
        """The authorization code Google sent back, or why there is none."""
        error = params.get("error")
        if error == "access_denied":
            raise ConsentDeclinedError("the user declined", user_id=pending.user_id)
        code = params.get("code")
        if error or not code:
            raise ConsentError(
                f"Google did not give a grant ({printable(error or 'no code', 60)})",
                user_id=pending.user_id,
            )
        return code[:2048]

    def _code_flow(self, pending: ConsentState, code: str) -> Flow[Grant]:
        core = self._store._core  # noqa: SLF001 - the library's own store
        return exchange_code(
            self.token_uri,
            code,
            verifier=pending.pkce_verifier(self._signer),
            redirect_uri=self.redirect_uri,
            client_id=self.client_id,
            client_secret=self._client_secret,
            http_timeout=core.http_timeout,
            clock=core.clock,
        )

    def _checked(self, pending: ConsentState, grant: Grant) -> tuple[Identity, Credentials]:
        uid = pending.user_id
        who = decide.identity(
            grant.id_token,
            client_id=self.client_id,
            nonce=pending.oidc_nonce(self._signer),
            now=time.time(),
            user_id=uid,
        )
        if not grant.rotated_refresh_token:
            raise ConsentError(
                "Google's answer carries no refresh token (offline access was not granted)",
                user_id=uid,
            )
        granted = grant.scopes or ()
        missing = decide.missing_scopes(self.scopes, granted)
        if missing:
            raise ConsentScopeError(
                f"the consent did not grant {printable(', '.join(missing))}",
                user_id=uid,
                missing=missing,
            )
        core = self._store._core  # noqa: SLF001 - the library's own store
        credentials = Credentials(
            grant.access_token,
            refresh_token=grant.rotated_refresh_token,
            token_uri=self.token_uri,
            client_id=self.client_id,
            client_secret=self._client_secret,
            scopes=list(granted),
            expiry=from_epoch(core.db_now() + grant.expires_in),  # the database's clock
        )
        return who, credentials

    def _save_flow(
        self, pending: ConsentState, who: Identity, credentials: Credentials
    ) -> tuple[Flow[TokenRecord], list[bool]]:
        """The save under the row lock, refusing another account; and whether it changed."""
        changed: list[bool] = []

        def accept(existing: TokenRecord | None) -> None:
            metadata = existing.metadata if existing else None
            row_email = existing.email if existing else None
            refusal = decide.account_refusal(
                metadata, row_email, who, expect_email=pending.expect_email
            )
            if refusal and not pending.allow_change:
                raise WrongAccountError(
                    f"the consent for user {pending.user_id} was given by {refusal}",
                    user_id=pending.user_id,
                    expected=pending.expect_email or decide.expected_account(metadata, row_email),
                )
            changed.append(refusal is not None)

        grant = new_grant(credentials, email=who.email, robeing_id=None, metadata=None)
        flow = flows.save(
            self._store._core,  # noqa: SLF001
            pending.user_id,
            grant,
            email=who.email,
            robeing_id=None,
            metadata={
                ACCOUNT_ID_KEY: who.sub,
                VERIFIED_KEY: True,
                CONSENTED_AT_KEY: datetime.now(UTC).isoformat(timespec="seconds"),
            },
            accept=accept,
        )
        return flow, changed

    @staticmethod
    def _result(
        pending: ConsentState, who: Identity, record: TokenRecord, changed: list[bool]
    ) -> ConsentResult:
        account_changed = bool(changed and changed[0])
        return ConsentResult(
            pending.user_id, who.email, who.sub, record.scopes or (), account_changed
        )


def _code_error(pending: ConsentState, exc: EndpointError) -> ConsentError:
    if exc.kind == "revoked":  # invalid_grant for a code: used, expired, or not ours
        return ConsentLinkError(
            "Google refused the authorization code (used or expired); start again",
            user_id=pending.user_id,
        )
    return ConsentError(
        f"Google's token endpoint did not give a grant ({printable(exc.error, 120)})",
        user_id=pending.user_id,
    )


class ConsentFlow(_Consent):
    """The consent for a `TokenStore` (sync: Flask, Django, the command)."""

    def __init__(self, store: TokenStore, **options: Any) -> None:
        super().__init__(store, **options)
        self._sync_store = store

    def start(self, params: Mapping[str, str]) -> ConsentStart:
        """The start route, from a reconnect link's query: Google's authorization URL to
        redirect to, and the binding to keep in the browser (a cookie) for the callback.

        Raises:
            ConsentLinkError: the link is tampered or expired (nothing was read).
        """
        link = self._link(params)
        row = self._sync_store._run(flows.find_row(self._store._core, link.user_id))  # noqa: SLF001
        return self._started(link.user_id, row, link.allow_change, link=link)

    def start_for(
        self, user_id: str, *, allow_account_change: bool = False, expect_email: str | None = None
    ) -> ConsentStart:
        """A consent for `user_id` started by the service itself (no link): the same
        authorization URL and binding. With `expect_email`, only the Google account with
        that email may consent (say, for a user who has no row yet)."""
        uid = parse_user_id(user_id)
        row = self._sync_store._run(flows.find_row(self._store._core, uid))  # noqa: SLF001
        return self._started(uid, row, allow_account_change, expect_email)

    def complete(self, params: Mapping[str, str], *, binding: str | None) -> ConsentResult:
        """The callback: verify the state, exchange the code, check the account and the
        scopes, save the grant under the row lock. Nothing is written on any refusal.

        Raises:
            ConsentLinkError, ConsentDeclinedError, WrongAccountError, ConsentScopeError,
            ConsentError; DatabaseUnavailableError and the store's other errors.
        """
        pending = self._callback_state(params, binding)
        store = self._sync_store
        try:
            code = self._code(pending, params)
            try:
                grant = store._run(self._code_flow(pending, code))  # noqa: SLF001
            except EndpointError as exc:
                raise _code_error(pending, exc) from None
            who, credentials = self._checked(pending, grant)
            flow, changed = self._save_flow(pending, who, credentials)
            record = store._run(flow)  # noqa: SLF001
        except ConsentError as exc:
            exc.retry_until = pending.link_expires  # a page may offer a fresh link until then
            raise
        return self._result(pending, who, record, changed)


class AsyncConsentFlow(_Consent):
    """The consent for an `AsyncTokenStore` (Starlette, FastAPI): the same, awaited."""

    def __init__(self, store: AsyncTokenStore, **options: Any) -> None:
        super().__init__(store, **options)
        self._async_store = store

    async def start(self, params: Mapping[str, str]) -> ConsentStart:
        """As `ConsentFlow.start`."""
        link = self._link(params)
        row = await self._async_store._run(flows.find_row(self._store._core, link.user_id))  # noqa: SLF001
        return self._started(link.user_id, row, link.allow_change, link=link)

    async def start_for(
        self, user_id: str, *, allow_account_change: bool = False, expect_email: str | None = None
    ) -> ConsentStart:
        """As `ConsentFlow.start_for`."""
        uid = parse_user_id(user_id)
        row = await self._async_store._run(flows.find_row(self._store._core, uid))  # noqa: SLF001
        return self._started(uid, row, allow_account_change, expect_email)

    async def complete(self, params: Mapping[str, str], *, binding: str | None) -> ConsentResult:
        """As `ConsentFlow.complete`."""
        pending = self._callback_state(params, binding)
        store = self._async_store
        try:
            code = self._code(pending, params)
            try:
                grant = await store._run(self._code_flow(pending, code))  # noqa: SLF001
            except EndpointError as exc:
                raise _code_error(pending, exc) from None
            who, credentials = self._checked(pending, grant)
            flow, changed = self._save_flow(pending, who, credentials)
            record = await store._run(flow)  # noqa: SLF001
        except ConsentError as exc:
            exc.retry_until = pending.link_expires  # a page may offer a fresh link until then
            raise
        return self._result(pending, who, record, changed)


def _start_url_for(redirect_uri: str) -> str:
    """The start route next to the callback (`.../auth/gmail/callback` -> `.../passport`)."""
    parts = urlsplit(redirect_uri)
    if not parts.path.endswith(CALLBACK_PATH):
        raise ValueError(
            f"redirect_uri does not end in {CALLBACK_PATH}: pass start_url (the start route)"
        )
    path = parts.path[: -len(CALLBACK_PATH)] + START_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _web_client(path: Path) -> Mapping[str, Any]:
    try:
        config = json.loads(read_small_file(path))
    except (OSError, ValueError):  # FileRefused and JSON errors are ValueErrors
        raise ConfigurationError(f"cannot read client secrets file {path.name}") from None
    client = config.get("web") if isinstance(config, dict) else None
    if (
        not isinstance(client, dict)
        or not client.get("client_id")
        or not client.get("client_secret")
    ):
        raise ConfigurationError(
            f"client secrets file {path.name} has no 'web' client with an id and a secret "
            "(Google Cloud console: APIs & Services, Credentials, OAuth client ID, Web application)"
        )
    return client
