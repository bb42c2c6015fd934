"""The process-wide stores behind `get_credentials` and `get_credentials_async`."""

from __future__ import annotations

import atexit
import os
import threading
import uuid
from collections.abc import Sequence

from google.oauth2.credentials import Credentials

from ._async_store import AsyncTokenStore
from ._store import TokenStore

_store: TokenStore | None = None
_async_store: AsyncTokenStore | None = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 - the parent's lock may have been held at the fork
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_store() -> TokenStore:
    """The process-wide `TokenStore.from_env()`, created on first use (thread-safe)."""
    global _store  # noqa: PLW0603 - the one process-wide store, created on first use
    store = _store
    if store is None:
        with _lock:
            store = _store
            if store is None:
                store = _store = TokenStore.from_env()
                atexit.register(store.close)  # its connections; a forked child closes its own
    return store


def shared_async_store() -> AsyncTokenStore:
    """The process-wide `AsyncTokenStore.from_env()`, created on first use."""
    global _async_store  # noqa: PLW0603
    store = _async_store
    if store is None:
        with _lock:
            store = _async_store
            if store is None:
                store = _async_store = AsyncTokenStore.from_env()
    return store


def get_credentials(
    user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
) -> Credentials:
    """Return valid Credentials for the user from a process-wide `TokenStore.from_env()`.

    The store is created on first use (thread-safe) from GMAIL_TOKEN_STORE_DSN or
    DATABASE_URL, and GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET. It is fork-safe: a worker
    forked after first use opens its own connections. See `TokenStore.get_credentials`.
    """
    return shared_store().get_credentials(user_id, scopes=scopes)


async def get_credentials_async(
    user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
) -> Credentials:
    """The coroutine twin of `get_credentials`, on a process-wide `AsyncTokenStore.from_env()`.

    See `AsyncTokenStore.get_credentials`. The store follows the running event loop: a
    new loop (a new `asyncio.run`) gets new connections.
    """
    return await shared_async_store().get_credentials(user_id, scopes=scopes)


def create_table(conninfo: str) -> bool:
    """Create the gmail_token table with the production schema if it does not exist.

    What `gmail-token-store init-db` runs; an existing table is never altered. Returns
    True when the table was created.

    Raises:
        ConfigurationError, DatabaseUnavailableError.
    """
    with TokenStore(conninfo, cache_ttl=0, max_connections=1) as store:
        return store.create_table()
