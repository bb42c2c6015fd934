"""What a store has open, per process (and, for the async store, per event loop).

A shell's connections, HTTP client and single flight belong to the process that opened
them: a forked child opens its own on first use, and keeps the parent's referenced but
untouched (see `fork`). The async store's pool is not tied to a loop (psycopg waits on a
socket in whichever loop drives it); its HTTP client and single flight are, so each loop
the store is used from gets its own. Twins: `Resources` (sync) and `AsyncResources`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .._core.errors import TokenStoreError
from . import fork
from .flight import AsyncSingleFlight, SingleFlight
from .http import async_client, sync_client
from .pool import Pool, PoolAdapter
from .pool_async import AsyncPool, AsyncPoolAdapter


@dataclass(slots=True)
class Opened:
    """What one process of a TokenStore has open."""

    pool: Pool | PoolAdapter
    http: httpx.Client
    #: Where hot-path reads go (`read_conninfo`), or None: the primary.
    read_pool: Pool | None = None
    flights: SingleFlight[Any] = field(default_factory=SingleFlight)
    pid: int = field(default_factory=os.getpid)


class Resources:
    """Opens a TokenStore's pool and HTTP client on first use in each process."""

    def __init__(
        self,
        make_pool: Callable[[], Pool | PoolAdapter],
        max_connections: int,
        make_read_pool: Callable[[], Pool] | None = None,
    ) -> None:
        self._make_pool = make_pool
        self._make_read_pool = make_read_pool
        self._max_connections = max_connections
        self._opened: Opened | None = None
        self._lock = threading.Lock()
        self.closed = False

    def get(self) -> Opened:
        opened = self._opened
        if opened is not None and opened.pid == os.getpid():
            return opened
        with self._lock:
            if self.closed:
                raise TokenStoreError("this TokenStore is closed")
            opened = self._opened
            if opened is None or opened.pid != os.getpid():
                fork.inherit(opened)  # (a pid mismatch here: forked without at-fork hooks)
                http = sync_client(self._max_connections)
                reads = self._make_read_pool() if self._make_read_pool is not None else None
                opened = self._opened = Opened(self._make_pool(), http, reads)
            return opened

    @property
    def opened(self) -> bool:
        """Has this process opened anything (is there anything to close)?"""
        return self._opened is not None and self._opened.pid == os.getpid()

    def close(self) -> None:
        """Close this process's pool and HTTP client (a pool passed in stays open)."""
        self.closed = True
        opened, self._opened = self._opened, None
        if opened is not None and opened.pid == os.getpid():
            opened.pool.close()
            if opened.read_pool is not None:
                opened.read_pool.close()
            opened.http.close()

    def after_fork(self) -> None:
        """In a child: forget the parent's resources without touching them."""
        fork.inherit(self._opened)
        self._opened = None
        self._lock = threading.Lock()


@dataclass(slots=True)
class AsyncOpened:
    """What an AsyncTokenStore uses inside one event loop: the pool (shared by every loop
    of the process), and the loop's own HTTP client and single flight."""

    pool: AsyncPool | AsyncPoolAdapter
    http: httpx.AsyncClient
    #: Where hot-path reads go (`read_conninfo`), or None: the primary.
    read_pool: AsyncPool | None = None
    flights: AsyncSingleFlight[Any] = field(default_factory=AsyncSingleFlight)


class AsyncResources:
    """Opens an AsyncTokenStore's pool once per process, its HTTP client once per loop."""

    def __init__(
        self,
        make_pool: Callable[[], AsyncPool | AsyncPoolAdapter],
        max_connections: int,
        make_read_pool: Callable[[], AsyncPool] | None = None,
    ) -> None:
        self._make_pool = make_pool
        self._make_read_pool = make_read_pool
        self._max_connections = max_connections
        self._pool: AsyncPool | AsyncPoolAdapter | None = None
        self._read_pool: AsyncPool | None = None
        self._pid = os.getpid()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpened] = (
            weakref.WeakKeyDictionary()
        )
        #: The loop used last and its resources: the common case is one lookup.
        self._current: tuple[asyncio.AbstractEventLoop, AsyncOpened] | None = None
        self._lock = threading.Lock()
        self.closed = False

    def get(self) -> AsyncOpened:
        loop = asyncio.get_running_loop()
        current = self._current
        if current is not None and current[0] is loop and self._pid == os.getpid():
            return current[1]
        with self._lock:
            if self.closed:
                raise TokenStoreError("this AsyncTokenStore is closed")
            if self._pid != os.getpid():  # forked without Python's at-fork hooks
                self._forget_parent()
            pool = self._pool
            if pool is None:
                pool = self._pool = self._make_pool()
                if self._make_read_pool is not None:
                    self._read_pool = self._make_read_pool()
            opened = self._loops.get(loop)
            if opened is None:
                http = async_client(self._max_connections)
                opened = self._loops[loop] = AsyncOpened(pool, http, self._read_pool)
            # The loop is referenced weakly everywhere else; this one is dropped with it
            # when another loop takes its place.
            self._current = (loop, opened)
        return opened

    @property
    def opened(self) -> bool:
        return self._pool is not None and self._pid == os.getpid()

    async def close(self) -> None:
        self.closed = True
        self._current = None
        pool, self._pool = self._pool, None
        reads, self._read_pool = self._read_pool, None
        if pool is not None and self._pid == os.getpid():
            await pool.close()
            if reads is not None:
                await reads.close()
        for opened in list(self._loops.values()):
            await opened.http.aclose()
        self._loops.clear()

    def after_fork(self) -> None:
        """In a child: forget the parent's resources without touching them."""
        self._forget_parent()
        self._lock = threading.Lock()

    def _forget_parent(self) -> None:
        fork.inherit((self._pool, self._read_pool, dict(self._loops)))
        self._pool, self._read_pool, self._current = None, None, None
        self._pid = os.getpid()
        self._loops = weakref.WeakKeyDictionary()
