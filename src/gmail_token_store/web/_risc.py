"""Google's Cross-Account Protection (RISC): the receiver of its security event tokens.

Google pushes a signed Security Event Token (a JWT) when it revokes a user's tokens or
sessions, disables an account, or revokes one refresh token; only for grants that include
`openid email` (the consent asks for them) and with the Google account id (`sub`) the
consent recorded. The receiver checks the token the way Google says (RS256 against the
keys of the issuer's discovery document, `iss` that issuer, `aud` one of our client ids,
no `exp`), acts once per `jti`, and answers 202; anything it cannot trust changes nothing
and gets 400. What a revocation does to a grant is the store's
(`AsyncTokenStore.record_revocation`): recorded dead, like `invalid_grant`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .. import AsyncTokenStore, TokenStoreError

logger = logging.getLogger("gmail_token_store")

#: Google's RISC discovery document (its `issuer` and `jwks_uri` are what is trusted).
GOOGLE_RISC_CONFIG_URL = "https://accounts.google.com/.well-known/risc-configuration"
_RISC = "https://schemas.openid.net/secevent/risc/event-type/"
_OAUTH = "https://schemas.openid.net/secevent/oauth/event-type/"
#: Events after which a grant of the account is dead.
ACCOUNT_REVOKED = {
    _RISC + "sessions-revoked": "sessions-revoked",
    _OAUTH + "tokens-revoked": "tokens-revoked",
    _RISC + "account-disabled": "account-disabled",
    _RISC + "account-purged": "account-purged",
}
TOKEN_REVOKED = _OAUTH + "token-revoked"
#: Keys are fetched again after this long (seconds), or for an unknown `kid` at most this
#: often (a flood of forged tokens must not become a flood of requests to Google).
_KEYS_LIFETIME = 3600.0
_REFETCH_INTERVAL = 60.0
#: `jti`s remembered (acted on once each); Google de-duplicates nothing itself.
_SEEN_MAX = 10_000
MAX_TOKEN_BYTES = 32 * 1024


class RiscRejected(Exception):
    """The token cannot be trusted (or used); nothing was done. `error` is RFC 8935's."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class RiscOutcome:
    """What one security event token did."""

    jti: str
    events: tuple[str, ...]
    #: User ids whose grants were recorded dead.
    revoked: tuple[str, ...] = ()
    duplicate: bool = False


@dataclass
class _Keys:
    issuer: str
    by_kid: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    fetched_at: float = 0.0


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RiscReceiver:
    """Checks and acts on Google's security event tokens for one store.

    Args:
        store: the store whose grants the events are about.
        client_ids: the OAuth client ids of the service (a token's `aud` must be one).
        config_url: the issuer's discovery document (default Google's).
        on_revoked: awaited with the user ids of grants an event killed (notices go out).
    """

    def __init__(
        self,
        store: AsyncTokenStore,
        *,
        client_ids: Sequence[str],
        config_url: str = GOOGLE_RISC_CONFIG_URL,
        http_timeout: float = 10.0,
        on_revoked: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        if isinstance(client_ids, str) or not client_ids:
            raise ValueError("client_ids must be a non-empty list of OAuth client ids")
        self._store = store
        self._client_ids = frozenset(client_ids)
        self._config_url = config_url
        self._timeout = http_timeout
        self._on_revoked = on_revoked
        self._keys: _Keys | None = None
        self._last_fetch = float("-inf")
        self._fetching = asyncio.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def receive(self, token: bytes) -> RiscOutcome:
        """Check one pushed token and act on it.

        Raises:
            RiscRejected: malformed, an unknown key, a bad signature, another issuer or
                audience: answer 400, nothing was done.
            TokenStoreError: the database did not answer (answer 5xx: Google retries).
        """
        claims = await self._verified(token)
        jti = claims["jti"]
        events: Mapping[str, Any] = claims["events"]
        if jti in self._seen:
            return RiscOutcome(jti, tuple(events), duplicate=True)
        revoked: list[str] = []
        for event_type, detail in events.items():
            revoked += await self._act(event_type, detail, claims)
        self._seen[jti] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        if revoked and self._on_revoked is not None:
            await self._on_revoked(revoked)
        return RiscOutcome(jti, tuple(events), tuple(revoked))

    async def _act(self, event_type: str, detail: object, claims: Mapping[str, Any]) -> list[str]:
        detail = detail if isinstance(detail, dict) else {}
        subject = detail.get("subject")
        subject = subject if isinstance(subject, dict) else {}
        what = ACCOUNT_REVOKED.get(event_type) or event_type.rsplit("/", 1)[-1][:64]
        reason = f"{what} (event {claims['jti'][:64]})"
        issued_at = float(claims["iat"])
        if event_type in ACCOUNT_REVOKED:
            sub = subject.get("sub")
            if not isinstance(sub, str) or not sub:
                raise RiscRejected("invalid_request", "the event names no account (sub)")
            return await self._store.record_revocation(
                reason=reason, issued_at=issued_at, google_account_id=sub[:255]
            )
        if event_type == TOKEN_REVOKED:
            # The identifier is in the subject (OAuth event types) or beside it (some senders).
            where = subject if "token" in subject else detail
            alg, value = where.get("token_identifier_alg"), where.get("token")
            if not isinstance(alg, str) or not isinstance(value, str) or not value:
                raise RiscRejected("invalid_request", "the token-revoked event names no token")
            try:
                return await self._store.record_revocation(
                    reason=reason, issued_at=issued_at, token=(alg, value[:512])
                )
            except ValueError:
                raise RiscRejected("invalid_request", "an unknown token identifier") from None
        logger.info("security event %r received; nothing to do", reason)
        return []

    # --- checking the token ---------------------------------------------------------------

    async def _verified(self, token: bytes) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise RiscRejected("invalid_request", "the token is too long")
        try:
            text = token.decode("ascii").strip()
            header_b64, payload_b64, signature_b64 = text.split(".")
            header = json.loads(_unb64(header_b64))
            claims = json.loads(_unb64(payload_b64))
            signature = _unb64(signature_b64)
        except (ValueError, UnicodeDecodeError):
            raise RiscRejected("invalid_request", "the token is not a JWT") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise RiscRejected("invalid_request", "the token is not a JWT")
        if header.get("alg") != "RS256":
            raise RiscRejected("invalid_request", "the token is not signed with RS256")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else "")
        try:
            key.verify(
                signature,
                f"{header_b64}.{payload_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise RiscRejected("invalid_key", "the token's signature is not valid") from None
        keys = self._keys
        assert keys is not None  # noqa: S101 - _key fetched them
        if claims.get("iss") != keys.issuer:
            raise RiscRejected("invalid_issuer", "the token is from another issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if not any(isinstance(aud, str) and aud in self._client_ids for aud in audiences):
            raise RiscRejected("invalid_audience", "the token is for another client")
        jti, iat, events = claims.get("jti"), claims.get("iat"), claims.get("events")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise RiscRejected("invalid_request", "the token has no jti")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise RiscRejected("invalid_request", "the token has no iat")
        if not isinstance(events, dict) or not events:
            raise RiscRejected("invalid_request", "the token carries no event")
        return claims  # (no `exp`: security events do not expire, Google says)

    async def _key(self, kid: str) -> rsa.RSAPublicKey:
        keys = self._keys
        now = time.monotonic()
        stale = keys is None or now - keys.fetched_at > _KEYS_LIFETIME
        unknown = keys is not None and kid not in keys.by_kid
        if stale or (unknown and now - self._last_fetch > _REFETCH_INTERVAL):
            async with self._fetching:
                if self._keys is keys:  # (nobody fetched them while we waited)
                    await self._fetch()
        keys = self._keys
        if keys is None or kid not in keys.by_kid:
            raise RiscRejected("invalid_key", "the token's key is not one the issuer publishes")
        return keys.by_kid[kid]

    async def _fetch(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http:
                config = (await http.get(self._config_url)).raise_for_status().json()
                issuer, jwks_uri = config["issuer"], config["jwks_uri"]
                jwks = (await http.get(jwks_uri)).raise_for_status().json()
            by_kid: dict[str, rsa.RSAPublicKey] = {}
            for jwk in jwks.get("keys", []):
                if jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str):
                    numbers = rsa.RSAPublicNumbers(
                        int.from_bytes(_unb64(jwk["e"]), "big"),
                        int.from_bytes(_unb64(jwk["n"]), "big"),
                    )
                    by_kid[jwk["kid"]] = numbers.public_key()
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            failure = TokenStoreError(
                "the security events' issuer did not give its keys (discovery document or "
                "JWKS unreachable or malformed); retry later"
            )
            failure.retryable = True
        else:
            self._keys = _Keys(str(issuer), by_kid, time.monotonic())
            return
        if self._keys is None:
            raise failure
        logger.warning("%s; the keys fetched before are kept", failure)


# --- registering the stream with Google ------------------------------------------------------

#: Google's RISC management API (stream configuration) and the JWT audience it wants.
RISC_API_URL = "https://risc.googleapis.com/v1beta"
_RISC_API_AUDIENCE = "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService"
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"
#: What the receiver acts on, and what it logs.
EVENTS_REQUESTED = (
    *ACCOUNT_REVOKED,
    TOKEN_REVOKED,
    _RISC + "account-enabled",
    _RISC + "account-credential-change-required",
    _RISC + "verification",
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _service_account_jwt(service_account: Mapping[str, Any], now: float) -> str:
    """The self-signed JWT a service account presents to the RISC API (an hour valid)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    email = service_account.get("client_email")
    pem = service_account.get("private_key")
    if not isinstance(email, str) or not isinstance(pem, str):
        raise ValueError("the service account file has no client_email and private_key")
    key = load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account's private key is not an RSA key")
    header = {"alg": "RS256", "typ": "JWT", "kid": str(service_account.get("private_key_id", ""))}
    claims = {
        "iss": email,
        "sub": email,
        "aud": _RISC_API_AUDIENCE,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    signing_input = ".".join(_b64(json.dumps(part).encode()) for part in (header, claims))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def register_stream(
    service_account: Mapping[str, Any],
    receiver_url: str,
    *,
    api_url: str = RISC_API_URL,
    verify: bool = True,
    timeout: float = 30.0,
) -> list[str]:
    """Point the Cloud project's RISC stream at `receiver_url` (https, on a domain the
    project authorized), asking for every event the receiver knows, then ask Google to
    send a `verification` event (with `verify`). Returns what was done, in words.

    The service account needs the role RISC Configuration Admin in the project of the OAuth
    clients, with the RISC API enabled (see the README, "Serving the API").

    Raises:
        ValueError: an unusable service account. httpx.HTTPError: the API refused.
    """
    bearer = _service_account_jwt(service_account, time.time())
    headers = {"Authorization": f"Bearer {bearer}"}
    done: list[str] = []
    with httpx.Client(timeout=timeout, follow_redirects=False, headers=headers) as http:
        http.post(
            f"{api_url}/stream:update",
            json={
                "delivery": {"delivery_method": PUSH_DELIVERY, "url": receiver_url},
                "events_requested": list(EVENTS_REQUESTED),
            },
        ).raise_for_status()
        done.append(f"the stream delivers {len(EVENTS_REQUESTED)} event types to {receiver_url}")
        if verify:
            state = "gmail-token-store-" + base64.urlsafe_b64encode(os.urandom(9)).decode()
            http.post(f"{api_url}/stream:verify", json={"state": state}).raise_for_status()
            done.append(f"Google was asked for a verification event (state {state})")
    return done
