"""The options both stores take, checked once: `StoreOptions` for callers, `Settings` inside.

Both `TokenStore(conninfo, **options)` and `TokenStore.from_env(**options)` (and their
async twins) are typed with `Unpack[StoreOptions]`, so a misspelt option or a value of the
wrong type is a type-checker error, and a wrong value a `ValueError` naming it at run time.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ._core.sealing import KeyProvider
from ._core.windows import Windows
from ._results import EventHook
from .exceptions import ConfigurationError


class StoreOptions(TypedDict, total=False):
    """Keyword options of TokenStore and AsyncTokenStore (seconds unless said otherwise).

    refresh_margin (300): a token with less left than this is refreshed.
    mandatory_refresh_margin (60): above it (inside refresh_margin) one caller refreshes
        while the others keep using the current token; below it callers wait (bounded).
    http_timeout (10): per token request; a whole refresh takes at most 3x this.
    lock_timeout (30): longest wait for another process's refresh of the same row.
    allowed_token_hosts (()): extra https hosts a row's token_uri may name.
    allow_loopback_token_uri (False): let token_uri name a loopback host (http or https):
        for emulators and tests only (the `testing` helpers opt in).
    client_id, client_secret (None): OAuth client for rows that carry none.
    prepare_threshold (5): psycopg's; None disables prepared statements (PgBouncer
        transaction pooling before 1.21).
    cache_ttl (60): seconds a user's credentials are served from memory; 0 disables.
    cache_size (10,000): users kept in the cache (least recently used leave first).
    max_connections (10): size of the store's own connection pool.
    connect_timeout (10): longest wait for a database connection.
    on_event (None): called with a TokenEvent per refresh, stale serve and failure.
    read_conninfo (None): a libpq URL or DSN for hot-path reads (streaming standbys, e.g.
        with target_session_attrs=prefer-standby); locks, writes and listings stay on the
        primary. A row found due there is refreshed under the primary's lock.
    keys (None): seal secrets at rest with these keys: a `gmail_token_store.keys.KeyProvider`
        (e.g. a `Keyring`) or a keyring's text (`id=base64key,...`, the first seals).
        Rows sealed with a key the store lacks are reported broken, naming the key.
    seal (True): with `keys`, seal what this store writes; False only opens sealed rows
        and writes plaintext (readers deployed before sealing is turned on; the way back).
    """

    refresh_margin: float
    mandatory_refresh_margin: float
    http_timeout: float
    lock_timeout: float
    allowed_token_hosts: Iterable[str]
    allow_loopback_token_uri: bool
    client_id: str | None
    client_secret: str | None
    prepare_threshold: int | None
    cache_ttl: float
    cache_size: int
    max_connections: int
    connect_timeout: float
    on_event: EventHook | None
    keys: KeyProvider | str | None
    seal: bool
    read_conninfo: str | None


@dataclass(frozen=True, slots=True)
class Settings:
    """Checked options (see StoreOptions)."""

    refresh_margin: float
    mandatory_refresh_margin: float
    http_timeout: float
    lock_timeout: float
    allowed_token_hosts: frozenset[str]
    allow_loopback_token_uri: bool
    client_id: str | None
    client_secret: str | None = field(repr=False)
    prepare_threshold: int | None
    cache_ttl: float
    cache_size: int
    max_connections: int
    connect_timeout: float
    on_event: EventHook | None
    #: A provider, or a keyring's text (the store parses it: `keys` needs `cryptography`).
    keys: KeyProvider | str | None = field(repr=False)
    seal: bool
    read_conninfo: str | None = field(repr=False)

    @property
    def windows(self) -> Windows:
        return Windows(
            refresh_margin=self.refresh_margin,
            mandatory_margin=self.mandatory_refresh_margin,
            lock_timeout=self.lock_timeout,
            refresh_budget=3 * self.http_timeout,
        )


def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _optional_text(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or None")
    return value or None


def settings_from(options: StoreOptions) -> Settings:
    """Check every option; raise ValueError naming the first bad one."""
    unknown = set(options) - set(StoreOptions.__annotations__)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    refresh_margin = _seconds(
        "refresh_margin", options.get("refresh_margin", 300.0), allow_zero=True
    )
    mandatory = _seconds(
        "mandatory_refresh_margin", options.get("mandatory_refresh_margin", 60.0), allow_zero=True
    )
    if mandatory > refresh_margin:
        raise ValueError(
            f"mandatory_refresh_margin ({mandatory!r}) must not exceed "
            f"refresh_margin ({refresh_margin!r})"
        )
    hosts = options.get("allowed_token_hosts", ())
    if isinstance(hosts, str) or not all(isinstance(host, str) for host in hosts):
        raise ValueError("allowed_token_hosts must be a collection of host names, not a str")
    prepare_threshold = options.get("prepare_threshold", 5)
    if prepare_threshold is not None and (
        isinstance(prepare_threshold, bool) or not isinstance(prepare_threshold, int)
    ):
        raise ValueError(f"prepare_threshold must be an int or None, got {prepare_threshold!r}")
    on_event = options.get("on_event")
    if on_event is not None and not callable(on_event):
        raise ValueError("on_event must be callable")
    allow_loopback = options.get("allow_loopback_token_uri", False)
    if not isinstance(allow_loopback, bool):
        raise ValueError(f"allow_loopback_token_uri must be True or False, got {allow_loopback!r}")
    seal = options.get("seal", True)
    if not isinstance(seal, bool):
        raise ValueError(f"seal must be True or False, got {seal!r}")
    return Settings(
        refresh_margin=refresh_margin,
        mandatory_refresh_margin=mandatory,
        http_timeout=_seconds("http_timeout", options.get("http_timeout", 10.0)),
        lock_timeout=_seconds("lock_timeout", options.get("lock_timeout", 30.0)),
        allowed_token_hosts=frozenset(host.lower() for host in hosts),
        allow_loopback_token_uri=allow_loopback,
        client_id=_optional_text("client_id", options.get("client_id")),
        client_secret=_optional_text("client_secret", options.get("client_secret")),
        prepare_threshold=prepare_threshold,
        cache_ttl=_seconds("cache_ttl", options.get("cache_ttl", 60.0), allow_zero=True),
        cache_size=_count("cache_size", options.get("cache_size", 10_000)),
        max_connections=_count("max_connections", options.get("max_connections", 10)),
        connect_timeout=_seconds("connect_timeout", options.get("connect_timeout", 10.0)),
        on_event=on_event,
        keys=_key_provider(options.get("keys")),
        seal=seal,
        read_conninfo=_optional_text("read_conninfo", options.get("read_conninfo")),
    )


def _key_provider(value: Any) -> KeyProvider | str | None:
    if value is None or isinstance(value, KeyProvider | str):
        return value
    raise ValueError("keys must be a KeyProvider (e.g. a Keyring), a keyring's text, or None")


def env(name: str) -> str | None:
    """An environment variable, with an empty value counting as unset."""
    value = os.environ.get(name, "").strip()
    return value or None


def dsn_from_env(dsn: str | None) -> str:
    """The DSN to use: `dsn`, else GMAIL_TOKEN_STORE_DSN, else DATABASE_URL."""
    found = dsn or env("GMAIL_TOKEN_STORE_DSN") or env("DATABASE_URL")
    if not found:
        raise ConfigurationError(
            "no database configured: set GMAIL_TOKEN_STORE_DSN (or DATABASE_URL) to a "
            "PostgreSQL URL such as postgresql://USER:PASSWORD@HOST:5432/main_db"
        )
    return found


#: The environment variable that lets `from_env()` stores (and the command) use loopback
#: token URIs: emulators and tests, never production.
ALLOW_LOOPBACK_ENV = "GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI"


def options_from_env(options: StoreOptions) -> StoreOptions:
    """`options` with what the environment sets: the fallback OAuth client from
    GOOGLE_CLIENT_ID / _SECRET, the loopback opt-in from ALLOW_LOOPBACK_ENV ("1")."""
    merged: StoreOptions = {
        "client_id": env("GOOGLE_CLIENT_ID"),
        "client_secret": env("GOOGLE_CLIENT_SECRET"),
    }
    flag = env(ALLOW_LOOPBACK_ENV)
    if flag is not None:
        if flag not in ("0", "1"):
            raise ConfigurationError(f"{ALLOW_LOOPBACK_ENV} must be 1 or 0 (or unset)")
        merged["allow_loopback_token_uri"] = flag == "1"
    read_dsn = env(READ_DSN_ENV)
    if read_dsn is not None:
        merged["read_conninfo"] = read_dsn
    keys = _keys_from_env()
    if keys is not None:
        merged["keys"] = keys
    seal = env(SEAL_ENV)
    if seal is not None:
        if seal not in ("0", "1"):
            raise ConfigurationError(f"{SEAL_ENV} must be 1 or 0 (or unset)")
        merged["seal"] = seal == "1"
    merged.update(options)
    return merged


#: Where hot-path reads go (a standby, or a multi-host DSN with prefer-standby).
READ_DSN_ENV = "GMAIL_TOKEN_STORE_READ_DSN"
#: The keyring (`id=base64key,...`, the first seals), or a file holding it; whether to seal.
KEYS_ENV = "GMAIL_TOKEN_STORE_KEYS"
KEYS_FILE_ENV = "GMAIL_TOKEN_STORE_KEYS_FILE"
SEAL_ENV = "GMAIL_TOKEN_STORE_SEAL"


def _keys_from_env() -> str | None:
    """The keyring's text from KEYS_ENV or the file KEYS_FILE_ENV names (not both)."""
    text, path = env(KEYS_ENV), env(KEYS_FILE_ENV)
    if text is not None and path is not None:
        raise ConfigurationError(f"set {KEYS_ENV} or {KEYS_FILE_ENV}, not both")
    if path is None:
        return text
    try:
        return read_small_file(path, limit=64 * 1024).decode("utf-8")
    except (OSError, FileRefused, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigurationError(
            f"cannot read the keyring file {KEYS_FILE_ENV}={path}: {reason}"
        ) from None


#: A configuration file (client secrets, keys) is a few KiB; a bigger one is not read.
MAX_FILE_BYTES = 1024 * 1024


class FileRefused(ValueError):
    """A file is not a regular file of at most the allowed size; the message says which."""


def read_small_file(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking (a FIFO would wait for a writer forever), checked to be a
    regular file (not /dev/zero, a socket or a directory), and read no further than one
    byte past the limit (a file that grows while read is refused too).

    Raises:
        FileRefused: not a regular file, or too big. OSError: cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRefused("it is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileRefused(f"it is bigger than {limit:,} bytes")
    return b"".join(chunks)
