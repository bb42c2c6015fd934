"""How Credentials handed out by an AsyncTokenStore refresh: through that store, from a thread.

An asyncio service calls Gmail through googleapiclient in a worker thread
(`asyncio.to_thread`, Starlette's threadpool), and google-auth's AsyncAuthorizedSession
refreshes sync credentials in a worker thread too. Their `refresh()` is a sync call: it is
handed to the store's event loop (`run_coroutine_threadsafe`), which refreshes under the
row lock and persists, and the thread waits for the result, a bounded time. Called on the
loop's own thread it would block the loop the refresh needs, so it refuses instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ._freshness import ROUND_TRIP_SLACK, Windows
from ._handout import Refresher
from ._record import TokenRecord
from .exceptions import RefreshFailedError, TokenStoreError

Adopt = Callable[[str, str | None], Coroutine[Any, Any, TokenRecord]]


class _LoopRefresher:
    """The Refresher for Credentials handed out on one event loop."""

    def __init__(self, adopt: Adopt, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._adopt = adopt
        self._loop = weakref.ref(loop)
        self._timeout = timeout

    def __call__(self, user_id: str, rejected_token: str | None, /) -> TokenRecord:
        loop = self._loop()
        if loop is None or loop.is_closed():
            raise TokenStoreError(
                "the event loop these credentials came from has ended; ask the store again"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise TokenStoreError(
                "credentials from an AsyncTokenStore were refreshed on the event loop's own "
                "thread, which would block it: call googleapiclient in a worker thread "
                "(asyncio.to_thread), or await store.get_credentials() again"
            )
        future: concurrent.futures.Future[TokenRecord] = asyncio.run_coroutine_threadsafe(
            self._adopt(user_id, rejected_token), loop
        )
        try:
            return future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RefreshFailedError(
                user_id, None, f"the store's event loop did not refresh within {self._timeout:g} s"
            ) from None
        except concurrent.futures.CancelledError:
            raise RefreshFailedError(user_id, None, "the refresh was cancelled") from None


class AsyncRefresher:
    """Makes the Refresher for each event loop an AsyncTokenStore hands Credentials out on."""

    def __init__(self, adopt: Adopt, windows: Windows) -> None:
        self._adopt = adopt
        # the lock wait, the token request and the database round trips, at most
        self._timeout = windows.lock_timeout + windows.refresh_budget + ROUND_TRIP_SLACK
        self._bound: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Refresher] = (
            weakref.WeakKeyDictionary()
        )

    def bound_to(self, loop: asyncio.AbstractEventLoop) -> Refresher:
        refresher = self._bound.get(loop)
        if refresher is None:
            refresher = self._bound[loop] = _LoopRefresher(self._adopt, loop, self._timeout)
        return refresher

    def after_fork(self) -> None:
        self._bound = weakref.WeakKeyDictionary()
