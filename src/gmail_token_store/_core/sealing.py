"""Sealed rows: where a row's secrets go when they are encrypted, and what binds them.

A sealed row keeps every column, and every key of its JSON but the secrets: the access
token, the refresh token and the OAuth client secret leave `token_data` and
`oauth_config` and live in one sealed value, `token_data.sealed`:

    {"v": 1, "kid": "k1", "dek": "<the data key, wrapped by key k1>",
     "secrets": "gts1:k1:<base64 of nonce + AES-256-GCM ciphertext>",
     "access_token_key": "access_token",
     "refresh_token_fingerprint": "sha256:...",
     "refresh_token_ids": {"prefix_sha256": "...", "hash_base64_sha512_sha512": "..."}}

* One value for the three secrets: a read opens it with one AES-GCM operation (the miss
  path pays one, not three). Its associated data binds it to the row's user id, to this
  place (`token_data.sealed`) and to the row's token URI: copied into another user's row,
  or left in a row whose token URI was changed, it does not open, and the row is `broken`
  (nothing is sent anywhere).
* Readers that know nothing of sealing (0.2.0, auth-server-style code reading
  `token_data.refresh_token`) find no token in a sealed row: they see it unusable, never
  send ciphertext to the token endpoint and never record the grant dead.
* What must work without opening it is beside it: the refresh token's fingerprint (a dead
  grant is recognised without decrypting) and the identifiers Google's `token-revoked`
  events use (the SHA-256 of its 16-character prefix, and its double SHA-512).
* A row holding plaintext tokens and a sealed value was written by an older writer after
  it was sealed: the plaintext is newer and wins (and is sealed again at the next write).

The cryptography is the injected `Sealer`'s (`gmail_token_store.keys`); this module knows
the layout and the associated data. No I/O.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

#: Where the sealed value lives in token_data.
SEALED_KEY = "sealed"
LAYOUT_VERSION = 1
#: The secrets a sealed value holds, by their name in it.
ACCESS, REFRESH, CLIENT_SECRET = "access_token", "refresh_token", "client_secret"
#: Keys that hold secrets in plaintext rows (token_data's and oauth_config's).
PLAIN_TOKEN_KEYS = ("access_token", "token", "refresh_token", "client_secret")


class KeyUnavailable(Exception):
    """The row is sealed with a key this store does not have (`key_id` names it)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class SealBroken(Exception):
    """A sealed value does not open: altered, or not this row's (user, token URI)."""


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps data keys with key-encryption keys named by id (a KMS, a keyring).

    `sealing_key_id` names the key new values are sealed with. `wrap` wraps a 32-byte data
    key with it and returns text (base64, or whatever the KMS returns, as text). `unwrap`
    returns the data key wrapped by key `key_id`; it raises for a key it does not have or a
    wrapped key it cannot open (any exception: the rows sealed with it are reported broken
    with the key id, nothing is sent). `key_ids` lists the ids it can unwrap with, for
    `list` and the rotation commands.
    """

    @property
    def sealing_key_id(self) -> str: ...

    def wrap(self, data_key: bytes) -> str: ...

    def unwrap(self, key_id: str, wrapped: str) -> bytes: ...

    def key_ids(self) -> tuple[str, ...]: ...


class Sealer(Protocol):
    """Opens and seals the secrets of a row (see `gmail_token_store.keys`)."""

    #: Whether this store seals what it writes (False: it writes plaintext, e.g. to undo).
    sealing: bool

    @property
    def sealing_key_id(self) -> str:
        """The key new values are sealed with."""
        ...

    def open(self, sealed: Mapping[str, Any], associated: bytes) -> dict[str, str]:
        """The secrets of a sealed value. Raises KeyUnavailable or SealBroken."""
        ...

    def seal(self, secrets: Mapping[str, str], associated: bytes) -> dict[str, Any]:
        """A sealed value (`kid`, `dek`, `secrets`) for these secrets."""
        ...


def associated_data(user_id: str, token_uri: str) -> bytes:
    """What a row's sealed value is bound to: its user, its place, its token URI."""
    return f"gmail-token-store/v1|{user_id}|token_data.sealed|{token_uri}".encode()


def sealed_part(token_data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The row's sealed value, if it has one (and no plaintext token written since)."""
    sealed = token_data.get(SEALED_KEY)
    if not isinstance(sealed, dict):
        return None
    if any(
        isinstance(token_data.get(key), str) and token_data[key] for key in PLAIN_TOKEN_KEYS[:3]
    ):
        return None  # an older writer stored plaintext tokens after sealing: they are newer
    return sealed


def key_id(sealed: Mapping[str, Any]) -> str:
    kid = sealed.get("kid")
    return kid[:64] if isinstance(kid, str) and kid else "(unnamed)"


def token_identifiers(refresh_token: str) -> dict[str, str]:
    """What Google's `token-revoked` events are matched by, without the token: the SHA-256
    of its first 16 characters (the prefix itself is a sixth of the secret) and
    base64(SHA-512(SHA-512(token)))."""
    inner = hashlib.sha512(refresh_token.encode()).digest()
    return {
        "prefix_sha256": hashlib.sha256(refresh_token[:16].encode()).hexdigest(),
        "hash_base64_sha512_sha512": base64.b64encode(hashlib.sha512(inner).digest()).decode(),
    }


def sealed_columns(
    sealer: Sealer,
    *,
    user_id: str,
    token_uri: str,
    token_data: Mapping[str, Any],
    oauth_config: Mapping[str, Any] | None,
    access_token: str | None,
    access_token_key: str,
    refresh_token: str | None,
    client_secret: str | None,
    fingerprint: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """token_data and oauth_config with the secrets sealed (every other key kept)."""
    data = {key: value for key, value in token_data.items() if key not in PLAIN_TOKEN_KEYS}
    data.pop(SEALED_KEY, None)
    secrets = {
        name: value
        for name, value in (
            (ACCESS, access_token),
            (REFRESH, refresh_token),
            (CLIENT_SECRET, client_secret),
        )
        if value
    }
    sealed = sealer.seal(secrets, associated_data(user_id, token_uri))
    sealed["v"] = LAYOUT_VERSION
    sealed["access_token_key"] = access_token_key
    if refresh_token:
        sealed["refresh_token_fingerprint"] = fingerprint
        sealed["refresh_token_ids"] = token_identifiers(refresh_token)
    data[SEALED_KEY] = sealed
    config = None
    if oauth_config is not None:
        config = {key: value for key, value in oauth_config.items() if key != CLIENT_SECRET}
    return data, config


def plain_columns(
    *,
    token_data: Mapping[str, Any],
    oauth_config: Mapping[str, Any] | None,
    access_token: str | None,
    access_token_key: str,
    refresh_token: str | None,
    client_secret: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """token_data and oauth_config with the secrets in plaintext (the unsealed layout); a
    client secret goes to oauth_config, or to token_data when the row has no oauth_config
    (the token.json layout)."""
    data = {key: value for key, value in token_data.items() if key != SEALED_KEY}
    if access_token:
        data[access_token_key] = access_token
    if refresh_token:
        data[REFRESH] = refresh_token
    config = dict(oauth_config) if oauth_config is not None else None
    if client_secret and config is not None:
        config[CLIENT_SECRET] = client_secret
    elif client_secret:
        data[CLIENT_SECRET] = client_secret
    return data, config
