"""AsyncTokenStore: the asyncio shell. The same flows as TokenStore, performed with awaits.

psycopg's AsyncConnection for the database, httpx's AsyncClient for the token endpoint: a
refresh never blocks the event loop and never takes a thread. Everything the store decides
is in `_core.flows` / `_core.refresh`, shared with the sync store;
`_io.async_shell.AsyncShell` performs their effects, and this class hands out Credentials
and keeps the cache. The twin of `_store`, kept line-parallel.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar, Unpack

from google.oauth2.credentials import Credentials
from psycopg_pool import AsyncConnectionPool

from ._base import StoreBase, new_grant, refresh_result
from ._core import flows, listing, reseal, risc
from ._core.effects import Flow
from ._core.errors import TokenStoreError, parse_user_id
from ._core.keepalive import KeepaliveReport
from ._core.listing import IDLE_SECONDS, TableSummary, needs_attention
from ._core.record import TokenRecord
from ._core.reseal import ResealReport, ResealTarget
from ._handout import AsyncRefresher
from ._io import fork
from ._io.async_shell import AsyncShell
from ._io.conninfo import conninfo_from
from ._io.events import logger
from ._keepalive import Progress, refresh_all_async, sieve_bounds, wanted
from ._options import StoreOptions, dsn_from_env, options_from_env
from ._results import AsyncStatusStream, RefreshResult, TokenStatus

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
        settings = self._settings
        self._io = AsyncShell(
            conninfo if isinstance(conninfo, AsyncConnectionPool) else conninfo_from(conninfo),
            max_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            prepare_threshold=settings.prepare_threshold,
            on_event=settings.on_event,
            forget=self._forget_cached,
            read_conninfo=(
                conninfo_from(settings.read_conninfo) if settings.read_conninfo else None
            ),
        )
        self._closing = asyncio.Lock()
        self._refresher = AsyncRefresher(self._adopt_or_refresh, settings.windows)
        fork.register(self._after_fork_in_child)

    @classmethod
    def from_env(cls, dsn: str | None = None, **options: Unpack[StoreOptions]) -> AsyncTokenStore:
        """Build a store from the environment; `dsn` and keyword options override it.

        The DSN comes from `GMAIL_TOKEN_STORE_DSN`, else `DATABASE_URL` (an empty variable
        counts as unset); the fallback OAuth client from `GOOGLE_CLIENT_ID` /
        `GOOGLE_CLIENT_SECRET`.

        Raises:
            ConfigurationError: neither variable names a database.
        """
        return cls(dsn_from_env(dsn), **options_from_env(options))

    # --- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write kept grants if the database answers, then close the store's connections
        and HTTP clients (a pool passed in stays open). Safe to call twice, or at once."""
        async with self._closing:
            if self._io.resources.closed:
                return
            if self._core.kept.unsaved_count and self._io.resources.opened:
                self._core.kept.flush_now()
                await self._flush_kept()
            self._report_lost_grants()
            await self._io.resources.close()
            if self._cache is not None:
                self._cache.clear()

    async def __aenter__(self) -> AsyncTokenStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return self._describe(self._io.resources.closed)

    def _after_fork_in_child(self) -> None:
        # See `_io.fork`: the parent's connections, HTTP clients and flights stay untouched.
        self._io.resources.after_fork()
        self._closing = asyncio.Lock()
        self._refresher.after_fork()
        self._forget_parent()

    # --- public operations ---------------------------------------------------------------

    async def get_credentials(
        self, user_id: str | uuid.UUID, *, scopes: Sequence[str] | None = None
    ) -> Credentials:
        """Return valid Credentials for the user, refreshing them first when they are due.

        The token has at least `refresh_margin` seconds left when the endpoint grants
        that much; inside the advisory window it may be the current, still-valid token
        while another caller refreshes. Never blocks the event loop.

        Args:
            user_id: the user's UUID (str or uuid.UUID).
            scopes: scopes the caller needs, e.g. [GMAIL_SEND].

        Raises:
            InvalidUserIdError, TokenNotFoundError, InvalidTokenRecordError,
            ReauthRequiredError, InsufficientScopesError, OAuthClientError,
            RefreshFailedError, DatabaseUnavailableError, ConfigurationError.
        """
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
        return self._remember(await self._run(flows.get_credentials(self._core, uid, scopes)))

    async def refresh(
        self,
        user_id: str | uuid.UUID,
        *,
        force: bool = False,
        unless_written_since: str | None = None,
        max_age: float = 0.0,
    ) -> RefreshResult:
        """Refresh the user's token if it is due (or always, with `force`).

        Unlike `get_credentials`, a failed refresh raises even while the old token is
        still valid: the caller asked for a refresh. With `unless_written_since` (a
        `TokenStatus.version` from `check`/`check_all`) the row is refreshed only if
        nobody wrote it since (or it is due anyway): the keepalive's compare-and-set. With
        `max_age` (seconds), a token this store read at most that long ago and that is not
        due is answered "valid" from the cache, without reading the row (the API's refresh).

        Returns:
            status "valid" (nothing was needed) or "refreshed".
        """
        uid = parse_user_id(user_id)
        if not force and unless_written_since is None:
            recent = self._recent_refresh(uid, max_age)
            if recent is not None:
                return recent
        seen, record = await self._run(
            flows.refresh(self._core, uid, force=force, unless_written_since=unless_written_since)
        )
        return refresh_result(self._core, seen, record, self._remember(record), time.time())

    async def check(self, user_id: str | uuid.UUID, *, max_age: float = 0.0) -> TokenStatus:
        """Report the health of the user's grant; never raises for a row that exists.

        With `max_age` (seconds), a row this store checked at most that long ago is not
        read again: its status is decided again now from what was read (the API's check).

        Raises:
            InvalidUserIdError, DatabaseUnavailableError, ConfigurationError.
        """
        uid = parse_user_id(user_id)
        recent = self._recent_check(uid, max_age)
        if recent is not None:
            return recent
        read_at = _monotonic()
        checked = await self._run(flows.check(self._core, uid))
        return self._checked_now(uid, checked, read_at, max_age)

    async def check_all(self) -> list[TokenStatus]:
        """Report the health of every grant in the table, oldest row first; each carries
        the row's `version` for `refresh(..., unless_written_since=...)`. Every status is
        in memory at once: for a big table, `iter_statuses()`."""
        return [status async for status in self.iter_statuses()]

    def iter_statuses(
        self, *, needs_attention: bool = False, page_size: int = 2000
    ) -> AsyncStatusStream:
        """The health of every grant, oldest row first, one page of rows in memory at a time
        (`check_all` as a stream; memory does not grow with the table).

        With `needs_attention`, only rows a person must look at are yielded, and rows that
        SQL proves `ok` are only counted (see `_core.listing`): much faster on a big table
        (a page is then 5 x `page_size` rows walked, of which only the others are read).
        The stream's `summary` counts every row either way, once the stream is exhausted.
        """
        self._page_size_check(page_size)
        summary = TableSummary()
        sieved = needs_attention
        return AsyncStatusStream(
            self._statuses(summary, page_size, margin=self.refresh_margin if sieved else None),
            summary,
        )

    async def _statuses(
        self,
        summary: TableSummary,
        page_size: int,
        *,
        margin: float | None,
        idle: float = IDLE_SECONDS,
        keep: Callable[[TokenStatus], bool] = needs_attention,
    ) -> AsyncIterator[TokenStatus]:
        """Walk the table page by page; with `margin`, through the sieve (yielding what
        `keep` keeps), else every row."""
        core = self._core
        sieve = (
            await self._run(listing.sieve(core, margin=margin, idle=idle))
            if margin is not None
            else None
        )
        after = 0
        while True:
            page = await self._run(
                listing.page(core, after=after, limit=page_size)
                if sieve is None
                else listing.sieved_page(core, sieve, summary, after=after, limit=page_size * 5)
            )
            for status in page.statuses:
                summary.add(status)
                if sieve is None or keep(status):
                    yield status
            if page.last_id is None:
                return
            after = page.last_id

    async def refresh_all(
        self,
        *,
        within: float | None = None,
        idle_days: float = 30.0,
        concurrency: int = 4,
        progress: Progress | None = None,
    ) -> KeepaliveReport:
        """The keepalive: refresh every grant expiring within `within` seconds (default:
        the refresh margin) or not refreshed for `idle_days`, `concurrency` in flight at once.

        The table is walked page by page through a sieve (memory stays flat), and each due
        row is refreshed as it comes, by compare-and-set on the version it was listed with
        (a row somebody refreshed since is not refreshed again) and only if nobody holds
        its lock (SKIP LOCKED: a row another run or a service is refreshing is left to it,
        `report.taken`). So several runs at once, on several hosts, share the due rows, and
        a run that dies holds nothing. `progress` is called with the report so far every
        few seconds."""
        within = self.refresh_margin if within is None else within
        summary = TableSummary()
        walk = self._statuses(
            summary,
            2000,  # (5 x through the sieve)
            keep=wanted(within, idle_days),
            **sieve_bounds(self.refresh_margin, within, idle_days),
        )
        return await refresh_all_async(
            walk,
            summary,
            self._refresh_unless_taken,
            within=within,
            idle_days=idle_days,
            concurrency=concurrency,
            progress=progress,
        )

    async def _refresh_unless_taken(
        self, user_id: str, version: str | None
    ) -> RefreshResult | None:
        """The keepalive's refresh (see `flows.keepalive_refresh`): None when another run
        or a service holds the row's lock."""
        outcome = await self._run(flows.keepalive_refresh(self._core, user_id, version))
        if outcome is None:
            return None
        seen, record = outcome
        return refresh_result(self._core, seen, record, self._remember(record), time.time())

    async def save(
        self,
        user_id: str | uuid.UUID,
        credentials: Credentials,
        *,
        email: str | None = None,
        robeing_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Insert or replace the user's grant (after a consent or an import).

        Keeps every other metadata key and column, clears any recorded refresh failure.

        Raises:
            InvalidUserIdError; ValueError for credentials without any token or bad
            metadata; InvalidTokenRecordError when the credentials' token_uri is refused.
        """
        uid = parse_user_id(user_id)
        grant = new_grant(credentials, email=email, robeing_id=robeing_id, metadata=metadata)
        await self._run(
            flows.save(
                self._core, uid, grant, email=email, robeing_id=robeing_id, metadata=metadata
            )
        )

    async def record_revocation(
        self,
        *,
        reason: str,
        issued_at: float,
        google_account_id: str | None = None,
        token: tuple[str, str] | None = None,
    ) -> list[str]:
        """Record as dead every grant Google revoked (a Cross-Account Protection event), like
        an `invalid_grant`; return their user ids.

        Args:
            reason: the event in words (shown in `check`, errors and notices).
            issued_at: when Google issued the event (epoch seconds): a grant consented to
                later is left alone (a late or replayed event never kills a reconnection).
            google_account_id: every verified grant of this Google account (`sub`), or
            token: (algorithm, identifier) of one refresh token: "prefix" (its first 16
                characters) or "hash_base64_sha512_sha512".
        """
        return await self._run(
            risc.record_revocation(
                self._core,
                reason=reason,
                issued_at=issued_at,
                account_id=google_account_id,
                token=token,
            )
        )

    async def reseal_all(
        self,
        target: ResealTarget,
        *,
        page_size: int = 500,
        progress: Callable[[ResealReport], None] | None = None,
    ) -> ResealReport:
        """Seal, re-seal or unseal the secrets of every row, online (`encrypt-all`,
        `rotate-keys`, `decrypt-all`).

        Args:
            target: "seal" (plaintext rows get sealed with the sealing key), "rotate" (rows
                sealed with another key get sealed with the sealing key) or "unseal" (sealed
                rows go back to plaintext; a store with `seal=False` does it).
            page_size: rows read and rewritten per statement.
            progress: called with the report so far after each page.

        Each page is rewritten by compare-and-set on the rows' versions: a row written
        meanwhile is decided again, never overwritten. Run it again to resume or finish.

        Raises:
            ConfigurationError: the store has no keys (or does not seal, for seal/rotate).
        """
        self._reseal_check(target, page_size)
        report = ResealReport()
        while True:
            page = await self._run(
                reseal.reseal_page(self._core, target, after=report.last_id, limit=page_size)
            )
            report.add(page)
            if progress is not None:
                progress(report)
            if page.rows < page_size:
                return report

    async def create_table(self) -> bool:
        """Create gmail_token if it does not exist (never alters it); True if created."""
        return await self._run(flows.create_table())

    # --- driving flows -------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        if self._io.resources.closed:
            raise TokenStoreError("this AsyncTokenStore is closed")
        result = await self._io.drive(flow)
        if self._core.kept.unsaved_count:
            await self._flush_kept()
        return result

    async def _flush_kept(self) -> None:
        try:
            await self._io.drive(flows.flush_kept(self._core))
        except TokenStoreError as exc:
            logger.warning("could not write kept grants yet: %s", exc)

    def _remember(self, record: TokenRecord) -> Credentials:
        return self._hand_out(record, self._refresher.bound_to(asyncio.get_running_loop()))

    async def _adopt_or_refresh(self, user_id: str, rejected_token: str | None) -> TokenRecord:
        record = await self._run(flows.adopt_or_refresh(self._core, user_id, rejected_token))
        self._remember(record)
        return record
