"""The fake Google's signing keys: RSA keys, their JWKS, RS256 JWTs and ID tokens.

Google signs ID tokens and RISC security event tokens with the keys it publishes at one JWKS
(https://www.googleapis.com/oauth2/v3/certs); the fake does the same with keys of its own, so
a consumer's verification code runs unchanged against it. Keys are made on first use: an RSA
key costs ~70 ms, and most tests of a suite never need one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._accounts import EMAIL_SCOPES, FakeAccount

#: The `iss` of Google's ID tokens (the RISC issuer, with its trailing slash, differs).
ID_TOKEN_ISSUER = "https://accounts.google.com"
ID_TOKEN_LIFETIME = 3600  # seconds, like Google's


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515, section 2): JWTs, JWKs and PKCE challenges."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class SigningKey:
    """One RSA key with its key id; generated when first used (thread-safe)."""

    def __init__(self) -> None:
        # Google's key ids are 40 hex digits.
        self.kid = secrets.token_hex(20)
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    def public_jwk(self) -> dict[str, str]:
        """The public key as Google's JWKS lists it."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }

    def __repr__(self) -> str:
        return f"<SigningKey kid={self.kid}>"


def sign_jwt(
    header: Mapping[str, Any], claims: Mapping[str, Any], key: rsa.RSAPrivateKey | None
) -> str:
    """Sign with RS256; with `key` None, an unsigned token (`alg: none`, empty signature)."""
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    if key is None:
        return signing_input + "."
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


class KeySet:
    """The fake's published keys (the newest signs), and one never published, for forgeries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published = [SigningKey()]
        self._foreign = SigningKey()

    def rotate(self) -> str:
        """Sign with a new key from now on; the old ones stay published. Returns its kid."""
        key = SigningKey()
        with self._lock:
            self._published.append(key)
        return key.kid

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set document: every published key."""
        with self._lock:
            keys = list(self._published)
        return {"keys": [key.public_jwk() for key in keys]}

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        typ: str | None = None,
        sign_with: Literal["issuer", "foreign", "none"] = "issuer",
        kid: str | None = None,
    ) -> str:
        """A JWT of these claims, signed by the current key, or forged as `sign_with` says:
        "foreign" signs with the unpublished key, "none" sends `alg: none` and no signature.
        `kid` puts another key id in the header."""
        with self._lock:
            key = self._foreign if sign_with == "foreign" else self._published[-1]
        header = {"alg": "none" if sign_with == "none" else "RS256", "kid": kid or key.kid}
        if typ is not None:
            header["typ"] = typ
        return sign_jwt(header, claims, None if sign_with == "none" else key.private_key)


def id_token(
    keys: KeySet,
    *,
    account: FakeAccount,
    client_id: str,
    scopes: Sequence[str],
    access_token: str,
    nonce: str | None,
) -> str:
    """The ID token Google sends when `openid` was granted, signed by the current key.

    `email` and `email_verified` only with the `email` scope, as Google does; `at_hash` binds
    the ID token to the access token sent with it (OpenID Connect Core, section 3.1.3.6).
    """
    now = int(time.time())
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    claims: dict[str, Any] = {
        "iss": ID_TOKEN_ISSUER,
        "azp": client_id,
        "aud": client_id,
        "sub": account.sub,
        "at_hash": b64url(digest[: len(digest) // 2]),
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
    }
    if EMAIL_SCOPES.intersection(scopes):
        claims["email"] = account.email
        claims["email_verified"] = account.email_verified
    if nonce is not None:
        claims["nonce"] = nonce
    return keys.sign(claims, typ="JWT")  # Google's ID tokens say typ JWT
