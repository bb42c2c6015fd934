"""AsyncTokenStore: the asyncio shell. The same flows as TokenStore, performed with awaits.

psycopg's AsyncConnection for the database, httpx's AsyncClient for the token endpoint: a
refresh never blocks the event loop and never takes a thread. Everything the store decides
is in `_flows` / `_refresh_flow`, shared with the sync store; `AsyncIO` performs their
effects, and this class hands out Credentials and keeps the cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar, Unpack

import psycopg
from google.oauth2.credentials import Credentials
from psycopg_pool import AsyncConnectionPool

from . import _flows, _fork
from ._async_handout import AsyncRefresher
from ._async_io import AsyncIO
from ._db_errors import database_error
from ._effects import Flow
from ._events import logger
from ._keepalive import KeepaliveReport, refresh_all_async
from ._options import StoreOptions, conninfo_from, dsn_from_env, options_from_env
from ._record import TokenRecord
from ._results import RefreshResult, TokenStatus
from ._store_common import StoreBase, check_save_input, refresh_result
from ._user_id import parse_user_id
from .exceptions import TokenStoreError

T = TypeVar("T")
_monotonic = time.monotonic  # a global lookup fewer on the cache-hit path


class AsyncTokenStore(StoreBase):
    """TokenStore for asyncio services: the same options, methods and semantics, with the
    I/O methods as coroutines. Use as `async with AsyncTokenStore(dsn) as store:`.

    Args:
        conninfo: a libpq URL or key=value DSN, or a `psycopg_pool.AsyncConnectionPool`
            the service owns (opened, with `kwargs={"autocommit": True}`).
        **options: see `StoreOptions`.
    """

    def __init__(
        self, conninfo: str | AsyncConnectionPool[Any], /, **options: Unpack[StoreOptions]
    ) -> None:
        super().__init__(options)
        self._io = AsyncIO(
            self._settings,
            conninfo if isinstance(conninfo, AsyncConnectionPool) else conninfo_from(conninfo),
            self._cache,
        )
        self._refresher = AsyncRefresher(self._adopt_or_refresh, self._settings.windows)
        _fork.register(self._after_fork_in_child)

    @classmethod
    def from_env(cls, dsn: str | None = None, **options: Unpack[StoreOptions]) -> AsyncTokenStore:
        """As `TokenStore.from_env`."""
        return cls(dsn_from_env(dsn), **options_from_env(options))

    # --- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write kept grants if the database answers, then close the store's connections."""
        if self._io.closed:
            return
        if self._core.kept.unsaved_count and self._io.opened:
            self._core.next_flush = 0.0
            await self._flush_kept()
        self._report_lost_grants()
        await self._io.close()
        if self._cache is not None:
            self._cache.clear()

    async def __aenter__(self) -> AsyncTokenStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return self._describe(self._io.closed)

    def _after_fork_in_child(self) -> None:
        self._io.after_fork()
        self._refresher.after_fork()
        self._forget_parent()

    # --- public operations (see TokenStore for the documentation) -------------------------

    async def get_credentials(
        self, user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
    ) -> Credentials:
        """As `TokenStore.get_credentials`; never blocks the event loop."""
        if isinstance(scopes, str):
            raise ValueError("scopes must be a list of scope URLs, not a single string")
        cache = self._cache
        if cache is not None and type(user_id) is str:
            entry = cache.get(user_id, _monotonic())
            if entry is not None and (scopes is None or entry.covers(scopes)):
                return entry.credentials
        uid = parse_user_id(user_id)
        if cache is not None:
            entry = cache.get(uid, _monotonic())
            if entry is not None and (scopes is None or entry.covers(scopes)):
                return entry.credentials
        return self._remember(await self._run(_flows.get_credentials(self._core, uid, scopes)))

    async def refresh(
        self,
        user_id: str | uuid.UUID,
        *,
        force: bool = False,
        unless_written_since: str | None = None,
    ) -> RefreshResult:
        """As `TokenStore.refresh`."""
        uid = parse_user_id(user_id)
        seen, record = await self._run(
            _flows.refresh(self._core, uid, force=force, unless_written_since=unless_written_since)
        )
        return refresh_result(self._core, seen, record, self._remember(record), time.time())

    async def check(self, user_id: str | uuid.UUID) -> TokenStatus:
        """As `TokenStore.check`."""
        return await self._run(_flows.check(self._core, parse_user_id(user_id)))

    async def check_all(self) -> list[TokenStatus]:
        """As `TokenStore.check_all`."""
        return await self._run(_flows.check_all(self._core))

    async def refresh_all(
        self, *, within: float | None = None, idle_days: float = 30.0, concurrency: int = 4
    ) -> KeepaliveReport:
        """As `TokenStore.refresh_all`, with `concurrency` refreshes in flight at once."""
        return await refresh_all_async(
            self,
            within=self.refresh_margin if within is None else within,
            idle_days=idle_days,
            concurrency=concurrency,
        )

    async def save(
        self,
        user_id: str | uuid.UUID,
        credentials: Credentials,
        *,
        email: str | None = None,
        robeing_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """As `TokenStore.save`."""
        uid = parse_user_id(user_id)
        check_save_input(credentials, robeing_id, metadata)
        await self._run(
            _flows.save(
                self._core, uid, credentials, email=email, robeing_id=robeing_id, metadata=metadata
            )
        )

    async def create_table(self) -> bool:
        """As `TokenStore.create_table`."""
        return await self._run(_flows.create_table())

    # --- driving flows -------------------------------------------------------------------

    # --- driving flows -------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        if self._io.closed:
            raise TokenStoreError("this AsyncTokenStore is closed")
        try:
            result = await self._io.drive(flow)
        except psycopg.Error as exc:  # a safety net: the effects map what they run
            raise database_error(exc) from exc
        if self._core.kept.unsaved_count:
            await self._flush_kept()
        return result

    async def _flush_kept(self) -> None:
        try:
            await self._io.drive(_flows.flush_kept(self._core))
        except (TokenStoreError, psycopg.Error) as exc:
            logger.warning("could not write kept grants yet: %s", exc)

    def _remember(self, record: TokenRecord) -> Credentials:
        return self._hand_out(record, self._refresher.bound_to(asyncio.get_running_loop()))

    async def _adopt_or_refresh(self, user_id: str, rejected_token: str | None) -> TokenRecord:
        record = await self._run(_flows.adopt_or_refresh(self._core, user_id, rejected_token))
        self._remember(record)
        return record
