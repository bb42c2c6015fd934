"""Keys that seal the secrets of rows at rest: a local keyring, or your KMS.

    store = TokenStore.from_env()            # GMAIL_TOKEN_STORE_KEYS="k2=...,k1=..."
    store = TokenStore(dsn, keys=Keyring.parse("k2=<base64 32 bytes>,k1=<...>"))
    store = TokenStore(dsn, keys=MyKms())    # anything with the KeyProvider methods

Envelope encryption: each process seals with a random 256-bit *data key* (AES-256-GCM, a
fresh 96-bit nonce per value), and stores that data key beside each value *wrapped* by a
key-encryption key of the `KeyProvider`, named by its id. The provider is asked to wrap
once per process and to unwrap once per data key it has not seen, so a KMS is called
rarely, never per row. The first key of a `Keyring` seals; every key in it opens.

Nothing here prints a key: reprs name key ids only, and errors never quote key material.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._core.sealing import KeyProvider, KeyUnavailable, SealBroken
from ._core.text import Masked
from ._options import KEYS_ENV, KEYS_FILE_ENV, FileRefused, read_small_file
from .exceptions import ConfigurationError

__all__ = ["KEYS_ENV", "KEYS_FILE_ENV", "EnvelopeSealer", "KeyProvider", "Keyring"]


_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_BYTES = 32
_NONCE_BYTES = 12
#: Prefix of a sealed value's ciphertext: the layout version and the key id.
_PREFIX = "gts1"
#: Values sealed with one data key before a new one is made: far below the 2**32 that
#: random 96-bit nonces allow under one key.
_SEALS_PER_DATA_KEY = 2**28
#: Opened values kept (their ciphertext is unique per seal): a row read again unchanged
#: costs a dict lookup, not a decryption.
_OPENED_KEPT = 10_000


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (binascii: several times faster than
    `base64.urlsafe_b64decode`, which the miss path would pay)."""
    text = text.strip().replace("-", "+").replace("_", "/")
    return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)


def _b64encode(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


class Keyring:
    """Local key-encryption keys by id; the first seals, all open (`KeyProvider`).

    Data keys are wrapped with AES-256-GCM under the key, bound to its id.
    """

    def __init__(self, keys: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        entries = list(keys.items() if isinstance(keys, Mapping) else keys)
        if not entries:
            raise ConfigurationError("a keyring needs at least one key")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in entries:
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise ConfigurationError(
                    f"a key id is 1 to 64 letters, digits, '.', '_' or '-'; got {_shown(key_id)}"
                )
            if key_id in self._keys:
                raise ConfigurationError(f"key id {key_id} appears twice in the keyring")
            if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
                raise ConfigurationError(
                    f"key {key_id} must be {_KEY_BYTES} bytes (base64 of 32 random bytes, "
                    "e.g. from `openssl rand -base64 32`)"
                )
            self._keys[key_id] = AESGCM(key)
        self._sealing: str = entries[0][0]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """A keyring from `id=base64key` entries separated by commas or lines.

        Raises:
            ConfigurationError: an entry is malformed (the message never quotes a key).
        """
        entries: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            for part in line.split("#", 1)[0].split(","):
                entry = part.strip()
                if not entry:
                    continue
                key_id, sep, encoded = entry.partition("=")
                if not sep:
                    raise ConfigurationError("a keyring entry is id=base64key; one has no '='")
                try:
                    key = _b64decode(encoded)
                except (binascii.Error, ValueError):
                    raise ConfigurationError(
                        f"key {_shown(key_id.strip())} is not base64"
                    ) from None
                entries.append((key_id.strip(), key))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """A keyring from a file of entries (as `parse`).

        Raises:
            ConfigurationError: the file cannot be read, or an entry is malformed.
        """
        try:
            raw = read_small_file(path, limit=64 * 1024)
        except (OSError, FileRefused) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigurationError(f"cannot read the keyring file {path}: {reason}") from None
        try:
            return cls.parse(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigurationError(f"the keyring file {path} is not UTF-8 text") from None

    @property
    def sealing_key_id(self) -> str:
        return self._sealing

    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def wrap(self, data_key: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        aead = self._keys[self._sealing]
        return _b64encode(nonce + aead.encrypt(nonce, data_key, self._bound(self._sealing)))

    def unwrap(self, key_id: str, wrapped: str) -> bytes:
        aead = self._keys.get(key_id)
        if aead is None:
            raise KeyError(key_id)
        raw = _b64decode(wrapped)
        return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], self._bound(key_id))

    @staticmethod
    def _bound(key_id: str) -> bytes:
        return f"gmail-token-store/v1|data-key|{key_id}".encode()

    def __repr__(self) -> str:
        return f"<Keyring seals with {self._sealing}; opens {', '.join(self._keys)}>"


def _shown(text: object) -> str:
    """A key id for a message: printable, short (it may be a pasted key by mistake)."""
    shown = repr(text)
    return shown if len(shown) <= 20 else shown[:8] + "...'"


class _Opened(OrderedDict[tuple[str, bytes], dict[str, str]]):
    """Secrets opened lately, by sealed value and associated data (repr: a count)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} opened values>"


class EnvelopeSealer:
    """Seals and opens rows' secrets with data keys wrapped by a `KeyProvider` (the
    `_core.sealing.Sealer` the stores use). Safe to share between threads and across
    `fork` (each value has a fresh random nonce; a child may keep its parent's data key).

    `sealing=False` opens sealed rows but writes plaintext (`decrypt-all`, or readers
    deployed before sealing is turned on).
    """

    def __init__(self, provider: KeyProvider, *, sealing: bool = True) -> None:
        self.provider = provider
        self.sealing = sealing
        self._lock = threading.Lock()
        self._opened: _Opened = _Opened()
        self._aeads: dict[tuple[str, str], AESGCM] = {}
        self._data_key: tuple[str, str, AESGCM] | None = None
        self._seals = 0
        if sealing:
            try:
                self._new_data_key()
            except Exception as exc:
                raise ConfigurationError(
                    f"the key provider cannot wrap a data key with key "
                    f"{_shown(provider.sealing_key_id)}: {type(exc).__name__}"
                ) from None

    def __repr__(self) -> str:
        return f"<EnvelopeSealer {self.provider!r} sealing={self.sealing}>"

    def key_ids(self) -> tuple[str, ...]:
        return self.provider.key_ids()

    @property
    def sealing_key_id(self) -> str:
        return self.provider.sealing_key_id

    def _new_data_key(self) -> tuple[str, str, AESGCM]:
        data_key = AESGCM.generate_key(bit_length=256)
        key_id = self.provider.sealing_key_id
        wrapped = self.provider.wrap(data_key)
        aead = AESGCM(data_key)
        self._aeads[(key_id, wrapped)] = aead
        self._data_key = (key_id, wrapped, aead)
        self._seals = 0
        return self._data_key

    def seal(self, secrets: Mapping[str, str], associated: bytes) -> dict[str, Any]:
        with self._lock:
            current = self._data_key
            if current is None or self._seals >= _SEALS_PER_DATA_KEY:
                current = self._new_data_key()
            self._seals += 1
        key_id, wrapped, aead = current
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(dict(secrets), separators=(",", ":")).encode()
        text = f"{_PREFIX}:{key_id}:{_b64encode(nonce + aead.encrypt(nonce, plain, associated))}"
        self._keep(text, associated, Masked(secrets))
        return {"kid": key_id, "dek": wrapped, "secrets": text}

    def open(self, sealed: Mapping[str, Any], associated: bytes) -> dict[str, str]:
        text, key_id, wrapped = sealed.get("secrets"), sealed.get("kid"), sealed.get("dek")
        if not (isinstance(text, str) and isinstance(key_id, str) and isinstance(wrapped, str)):
            raise SealBroken
        opened = self._opened.get((text, associated))
        if opened is not None:
            return opened
        prefix = f"{_PREFIX}:{key_id}:"
        if not text.startswith(prefix):
            raise SealBroken
        aead = self._aeads.get((key_id, wrapped))
        if aead is None:
            aead = self._unwrapped(key_id, wrapped)
        try:
            raw = _b64decode(text[len(prefix) :])
            plain = aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated)
            secrets = json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag):
            raise SealBroken from None
        if not isinstance(secrets, dict) or not all(
            isinstance(value, str) for value in secrets.values()
        ):
            raise SealBroken
        opened = Masked(secrets)
        self._keep(text, associated, opened)
        return opened

    def _unwrapped(self, key_id: str, wrapped: str) -> AESGCM:
        try:
            data_key = self.provider.unwrap(key_id, wrapped)
            aead = AESGCM(data_key)
        except Exception:  # a provider's failure is this key's absence (nothing is sent)
            raise KeyUnavailable(key_id) from None
        with self._lock:
            if len(self._aeads) >= _OPENED_KEPT:
                self._aeads.clear()
            self._aeads[(key_id, wrapped)] = aead
        return aead

    def _keep(self, text: str, associated: bytes, secrets: dict[str, str]) -> None:
        with self._lock:
            if len(self._opened) >= _OPENED_KEPT:
                self._opened.popitem(last=False)  # the oldest (O(1), unlike a dict's)
            self._opened[(text, associated)] = secrets

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()
