"""The fake Google's RISC issuer (Cross-Account Protection): discovery, events, subjects.

Google pushes security event tokens (RFC 8417 JWTs, RS256, no `exp`: they record past
events) to a receiver, which checks them against the issuer and JWKS named by
https://accounts.google.com/.well-known/risc-configuration. The fake serves the same document
for its own keys, and builds the tokens a receiver's tests send it. The shapes follow
https://developers.google.com/identity/protocols/risc.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import secrets
import time
from collections.abc import Mapping
from typing import Any, Literal

from ._accounts import FakeAccount

#: The `issuer` of Google's RISC configuration and the `iss` of its tokens (trailing slash).
GOOGLE_RISC_ISSUER = "https://accounts.google.com/"
PUSH_DELIVERY = "https://schemas.openid.net/secevent/risc/delivery-method/push"

TokenIdentifierAlg = Literal["prefix", "hash_base64_sha512_sha512"]


class RiscEvent(enum.StrEnum):
    """The event types Google's Cross-Account Protection sends (values are their URIs)."""

    SESSIONS_REVOKED = "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked"
    TOKENS_REVOKED = "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked"
    #: The subject is an `oauth_token(...)`: one refresh token.
    TOKEN_REVOKED = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked"
    #: Extra: `reason` "hijacking" or "bulk-account", or none.
    ACCOUNT_DISABLED = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
    ACCOUNT_ENABLED = "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
    ACCOUNT_PURGED = "https://schemas.openid.net/secevent/risc/event-type/account-purged"
    ACCOUNT_CREDENTIAL_CHANGE_REQUIRED = (
        "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required"
    )
    #: A test token the receiver asked for: extra `state`, no subject.
    VERIFICATION = "https://schemas.openid.net/secevent/risc/event-type/verification"


def risc_configuration(*, issuer: str, jwks_uri: str, base_url: str) -> dict[str, Any]:
    """The discovery document, in the shape of Google's.

    The subject endpoints are named as Google names its own; the fake does not serve them.
    """
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "delivery_methods_supported": [PUSH_DELIVERY],
        "add_subject_endpoint": f"{base_url}/v1beta/subjects:add",
        "remove_subject_endpoint": f"{base_url}/v1beta/subjects:remove",
    }


def iss_sub(account: FakeAccount | str, *, iss: str = GOOGLE_RISC_ISSUER) -> dict[str, str]:
    """The `iss-sub` subject of an account (or of an account id): how Google names a user."""
    sub = account.sub if isinstance(account, FakeAccount) else account
    return {"subject_type": "iss-sub", "iss": iss, "sub": sub}


def token_identifier(token: str, alg: TokenIdentifierAlg) -> str:
    """How a token-revoked event names a refresh token without sending it.

    `prefix`: its first 16 characters. `hash_base64_sha512_sha512`: standard base64 (with
    padding) of SHA-512 over the raw SHA-512 digest of the token's UTF-8 bytes.
    """
    if alg == "prefix":
        return token[:16]
    if alg == "hash_base64_sha512_sha512":
        inner = hashlib.sha512(token.encode()).digest()
        return base64.b64encode(hashlib.sha512(inner).digest()).decode("ascii")
    raise ValueError(f"unknown token_identifier_alg {alg!r}")


def oauth_token(
    token: str, alg: TokenIdentifierAlg, *, token_type: str = "refresh_token"
) -> dict[str, str]:
    """The `oauth_token` subject of a token-revoked event for this refresh token."""
    return {
        "subject_type": "oauth_token",
        "token_type": token_type,
        "token_identifier_alg": alg,
        "token": token_identifier(token, alg),
    }


def security_event_claims(
    event_type: RiscEvent | str,
    subject: Mapping[str, Any] | None,
    *,
    issuer: str,
    audience: str,
    jti: str | None,
    iat: int | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The claims of one security event token: one event, no `exp` (as Google sends)."""
    event: dict[str, Any] = {} if subject is None else {"subject": dict(subject)}
    event.update(extra or {})
    return {
        "iss": issuer,
        "aud": audience,
        "iat": int(time.time()) if iat is None else iat,
        # Google's jti values are 32 hex digits.
        "jti": secrets.token_hex(16) if jti is None else jti,
        "events": {str(event_type): event},
    }
