"""TokenStore: read a grant, refresh it once under a row lock, persist it, hand out Credentials.

Paths, from the common one down:

* cache hit: a dict lookup and a clock comparison, no I/O;
* hot path: one autocommit `SELECT` by user_id, no lock, no BEGIN/SET/COMMIT;
* refresh path, inside one transaction: transaction-local timeouts, then
  `SELECT ... FOR NO KEY UPDATE` of the row (the lock), a re-check (somebody may have
  refreshed while we waited), the token request, and the write-back, all under the lock.

Inside the refresh margin but outside the mandatory window the lock is only *tried*
(`SKIP LOCKED`): one caller refreshes and everyone else keeps using the still-valid token
instead of queueing. Only an expired token, or one inside the mandatory window, makes
callers wait, and then for at most `lock_timeout`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
from google.oauth2.credentials import Credentials
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from ._cache import CredentialsCache
from ._credentials import credentials_for
from ._flight import FlightTimeoutError, SingleFlight
from ._record import (
    COLUMNS,
    TokenRecord,
    epoch,
    grant_columns,
    metadata_with_failure,
    metadata_without_failure,
    parse_row,
    refreshed_token_data,
    utc_naive,
)
from ._refresh import EndpointError, Grant, TokenEndpoint, token_uri_refusal
from ._results import EventHook, RefreshResult, TokenEvent, TokenState, TokenStatus
from ._user_id import parse_user_id
from .exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    InsufficientScopesError,
    InvalidTokenRecordError,
    OAuthClientError,
    ReauthRequiredError,
    RefreshFailedError,
    TokenNotFoundError,
    TokenStoreError,
    describe_user,
)

logger = logging.getLogger("gmail_token_store")

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

_SELECT_ROW = f"SELECT {COLUMNS} FROM gmail_token WHERE user_id = %s"
_LOCK_ROW = _SELECT_ROW + " FOR NO KEY UPDATE"
_SELECT_WITH_CLOCK = f"SELECT {COLUMNS}, LOCALTIMESTAMP FROM gmail_token WHERE user_id = %s"
_RETURNING = f" RETURNING {COLUMNS}"
_TIMESTAMPTZ_OID = 1184
_IDLE = psycopg.pq.TransactionStatus.IDLE
_HOT_CURSOR = "_gmail_token_store_cursor"

#: A grant not refreshed for this long is close to Google's 6-month unused-token rule.
IDLE_AFTER = timedelta(days=150)


@dataclasses.dataclass(slots=True)
class _Progress:
    """What a unit of database work has done so far (decides whether it may be retried)."""

    contacted_endpoint: bool = False


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_conninfo(conninfo: object) -> None:
    if not isinstance(conninfo, str) or not conninfo.strip():
        raise ConfigurationError(
            "conninfo must be a non-empty libpq URL/DSN string or a psycopg_pool.ConnectionPool"
        )
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        # libpq's parse errors quote the DSN, password included: never chain them.
        raise ConfigurationError(
            "the database DSN cannot be parsed (not shown: it may contain a password)"
        ) from None


class TokenStore:
    """Valid Gmail credentials from the gmail_token table, refreshed at most once at a time.

    Args:
        conninfo: a libpq URL or key=value DSN (the store opens its own pool), or a
            `psycopg_pool.ConnectionPool` the service already owns (give it
            `kwargs={"autocommit": True}` for the one-round-trip hot path).
        refresh_margin: seconds; a token with less left than this is refreshed.
        mandatory_refresh_margin: seconds; above it (but inside `refresh_margin`) one caller
            refreshes while the others keep using the current token; below it callers wait.
        http_timeout: seconds per token request; a whole refresh takes at most 3x this.
        lock_timeout: seconds to wait for another process's refresh of the same row.
        allowed_token_hosts: extra https hosts a row's token_uri may name.
        client_id, client_secret: OAuth client used for rows that carry none.
        prepare_threshold: psycopg's; None disables prepared statements (PgBouncer
            transaction pooling before 1.21).
        cache_ttl: seconds a user's credentials are served from memory; 0 disables.
        cache_size: users kept in the cache (least recently used leave first).
        max_connections: size of the store's own pool.
        connect_timeout: seconds to wait for a pooled connection.
        on_event: called with a TokenEvent for every refresh, stale serve and failure.
    """

    def __init__(
        self,
        conninfo: str | ConnectionPool[Any],
        *,
        refresh_margin: float = 300.0,
        mandatory_refresh_margin: float = 60.0,
        http_timeout: float = 10.0,
        lock_timeout: float = 30.0,
        allowed_token_hosts: Iterable[str] = (),
        client_id: str | None = None,
        client_secret: str | None = None,
        prepare_threshold: int | None = 5,
        cache_ttl: float = 60.0,
        cache_size: int = 10_000,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
        on_event: EventHook | None = None,
    ) -> None:
        if not isinstance(conninfo, ConnectionPool):
            _check_conninfo(conninfo)
        self.refresh_margin = _positive("refresh_margin", refresh_margin, allow_zero=True)
        self.mandatory_refresh_margin = _positive(
            "mandatory_refresh_margin", mandatory_refresh_margin, allow_zero=True
        )
        if self.mandatory_refresh_margin > self.refresh_margin:
            raise ValueError(
                f"mandatory_refresh_margin ({mandatory_refresh_margin!r}) must not exceed "
                f"refresh_margin ({refresh_margin!r})"
            )
        self.http_timeout = _positive("http_timeout", http_timeout)
        self.lock_timeout = _positive("lock_timeout", lock_timeout)
        self._connect_timeout = _positive("connect_timeout", connect_timeout)
        cache_ttl = _positive("cache_ttl", cache_ttl, allow_zero=True)
        if isinstance(allowed_token_hosts, str):
            raise ValueError("allowed_token_hosts must be a collection of host names, not a str")
        self._allowed_hosts = frozenset(host.lower() for host in allowed_token_hosts)
        self._token_uri_verdicts: dict[str, str | None] = {}
        if prepare_threshold is not None and (
            isinstance(prepare_threshold, bool) or not isinstance(prepare_threshold, int)
        ):
            raise ValueError(f"prepare_threshold must be an int or None, got {prepare_threshold!r}")
        for name, count in (("cache_size", cache_size), ("max_connections", max_connections)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be a positive int, got {count!r}")
        if on_event is not None and not callable(on_event):
            raise ValueError("on_event must be callable")

        self._fallback_client = (client_id or None, client_secret or None)
        # What handed-out Credentials report as expired / stale (see StoreCredentials).
        self._windows = (
            timedelta(seconds=max(self.mandatory_refresh_margin, 10.0)),
            timedelta(seconds=self.refresh_margin),
        )
        # Per-statement override: with a pool we do not own we cannot set the connection's.
        self._prepare: bool | None = False if prepare_threshold is None else None
        self._on_event = on_event
        self._cache = CredentialsCache(ttl=cache_ttl, max_entries=cache_size) if cache_ttl else None
        self._flights: SingleFlight[TokenRecord] = SingleFlight()
        self._endpoint = TokenEndpoint(
            http_timeout=self.http_timeout, max_connections=max_connections
        )
        # lock wait + the endpoint budget + slack for the database round trips
        self._flight_timeout = self.lock_timeout + self._endpoint.budget + 5.0
        # Both timeouts are transaction-local (set_config(..., true)), so nothing leaks into
        # the session: safe behind PgBouncer in transaction mode. The idle-in-transaction
        # timeout frees the row if this host dies mid-refresh without closing its socket;
        # it exceeds the refresh budget, so it never cuts a refresh of ours short.
        self._set_timeouts = (
            f"SELECT set_config('lock_timeout', '{int(self.lock_timeout * 1000)}ms', true),"
            " set_config('idle_in_transaction_session_timeout',"
            f" '{int((self._endpoint.budget + 15.0) * 1000)}ms', true)"
        )
        self._owns_pool = isinstance(conninfo, str)
        self._pool: ConnectionPool[Any] = (
            self._open_pool(conninfo, prepare_threshold, max_connections)
            if isinstance(conninfo, str)
            else conninfo
        )
        self._closed = False

    def _open_pool(
        self, conninfo: str, prepare_threshold: int | None, max_connections: int
    ) -> ConnectionPool[Any]:
        return ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
            timeout=self._connect_timeout,
            name="gmail_token_store",
            open=True,
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> TokenStore:
        """Build a store from the environment; keyword arguments override it.

        The DSN comes from `GMAIL_TOKEN_STORE_DSN`, else `DATABASE_URL` (an empty variable
        counts as unset); the fallback OAuth client from `GOOGLE_CLIENT_ID` /
        `GOOGLE_CLIENT_SECRET`.

        Raises:
            ConfigurationError: neither variable names a database.
        """
        conninfo = (
            overrides.pop("conninfo", None) or _env("GMAIL_TOKEN_STORE_DSN") or _env("DATABASE_URL")
        )
        if not conninfo:
            raise ConfigurationError(
                "no database configured: set GMAIL_TOKEN_STORE_DSN (or DATABASE_URL) to a "
                "PostgreSQL URL such as postgresql://USER:PASSWORD@HOST:5432/main_db"
            )
        overrides.setdefault("client_id", _env("GOOGLE_CLIENT_ID"))
        overrides.setdefault("client_secret", _env("GOOGLE_CLIENT_SECRET"))
        return cls(conninfo, **overrides)

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the store's own pool and HTTP session (a pool passed in stays open)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_pool:
            self._pool.close()
        self._endpoint.close()
        if self._cache is not None:
            self._cache.clear()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TokenStore pool={self._pool.name!r} refresh_margin={self.refresh_margin} "
            f"cache={'on' if self._cache else 'off'}{' closed' if self._closed else ''}>"
        )

    # --- public operations ---------------------------------------------------------------

    def get_credentials(
        self, user_id: object, *, scopes: Sequence[str] | None = None
    ) -> Credentials:
        """Return valid Credentials for the user, refreshing them first when they are due.

        The token has at least `refresh_margin` seconds left when the endpoint grants
        that much; inside the advisory window it may be the current, still-valid token
        while another caller refreshes.

        Args:
            user_id: the user's UUID (str or uuid.UUID).
            scopes: scopes the caller needs, e.g. gmail.send.

        Raises:
            InvalidUserIdError, TokenNotFoundError, InvalidTokenRecordError,
            ReauthRequiredError, InsufficientScopesError, OAuthClientError,
            RefreshFailedError, DatabaseUnavailableError.
        """
        if isinstance(scopes, str):
            raise ValueError("scopes must be a list of scope URLs, not a single string")
        cache = self._cache
        if cache is not None and type(user_id) is str:
            entry = cache.get(user_id)  # the hit path: no parsing, no lock, no I/O
            if entry is not None and (scopes is None or _covers(entry.scopes, scopes)):
                return entry.credentials
        uid = parse_user_id(user_id)
        if cache is not None:
            entry = cache.get(uid)
            if entry is not None and (scopes is None or _covers(entry.scopes, scopes)):
                return entry.credentials
        record = self._read(uid)
        _require_scopes(record, scopes)  # before refreshing: a refresh cannot add a scope
        return self._remember(self._fresh(record))

    def refresh(self, user_id: object, *, force: bool = False) -> RefreshResult:
        """Refresh the user's token if it is due (or always, with `force`).

        Unlike `get_credentials`, a failed refresh raises even while the old token is
        still valid: the caller asked for a refresh.

        Returns:
            status "valid" (nothing was needed) or "refreshed".
        """
        seen = self._read(parse_user_id(user_id))
        if not force and seen.seconds_left(time.time()) >= self.refresh_margin:
            return self._result(seen, seen)
        token_seen = seen.access_token

        def still_the_token_seen(record: TokenRecord) -> bool:
            return record.access_token == token_seen or self._is_due(record)

        return self._refresh_unless(seen, still_the_token_seen)

    def _refresh_unless_written_since(self, listed: TokenRecord) -> RefreshResult:
        """Refresh unless any writer touched the row since `listed` was read.

        The keepalive's compare-and-set: two runs, or a run and a service, never refresh
        the same row twice.
        """
        version = (listed.updated_at, listed.expiry)

        def unchanged(record: TokenRecord) -> bool:
            return (record.updated_at, record.expiry) == version or self._is_due(record)

        return self._refresh_unless(listed, unchanged)

    def _refresh_unless(
        self, seen: TokenRecord, needs_refresh: Callable[[TokenRecord], bool]
    ) -> RefreshResult:
        self._raise_if_unusable(seen)
        record = (
            self._refresh_shared(seen, needs_refresh, blocking=True, stale_ok=None)
            if needs_refresh(seen)
            else seen
        )
        return self._result(seen, record)

    def _result(self, seen: TokenRecord, record: TokenRecord) -> RefreshResult:
        credentials = self._remember(record)
        assert record.access_token is not None  # noqa: S101 - a served record has one
        assert record.expiry is not None  # noqa: S101
        return RefreshResult(
            status="refreshed" if record.access_token != seen.access_token else "valid",
            user_id=record.user_id,
            email=record.email,
            expires_in=max(int(record.seconds_left(time.time())), 0),
            expiry=record.expiry,
            access_token=record.access_token,
            credentials=credentials,
        )

    def check(self, user_id: object) -> TokenStatus:
        """Report the health of the user's grant; never raises for a row that exists.

        Raises:
            InvalidUserIdError, DatabaseUnavailableError.
        """
        uid = parse_user_id(user_id)

        def work(conn: Connection, _progress: _Progress) -> tuple[Any, ...] | None:
            return conn.execute(_SELECT_WITH_CLOCK, (uid,), prepare=self._prepare).fetchone()

        row = self._run(work)
        if row is None:
            return TokenStatus(status="not_found", user_id=uid, state="not-found")
        return self._status_of(self._parse(row[:-1]), db_now=row[-1])

    def check_all(self) -> list[TokenStatus]:
        """Report the health of every grant in the table, oldest row first.

        Raises:
            DatabaseUnavailableError.
        """
        return [status for _record, status in self._listing()]

    def _listing(self) -> list[tuple[TokenRecord, TokenStatus]]:
        """Every row as a record and its status."""

        def work(conn: Connection, _progress: _Progress) -> list[tuple[Any, ...]]:
            query = f"SELECT {COLUMNS}, LOCALTIMESTAMP FROM gmail_token ORDER BY id"
            return conn.execute(query, prepare=self._prepare).fetchall()

        listing = []
        for row in self._run(work):
            record = self._parse(row[:-1])
            listing.append((record, self._status_of(record, db_now=row[-1])))
        return listing

    def save(
        self,
        user_id: object,
        credentials: Credentials,
        *,
        email: str | None = None,
        robeing_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Insert or replace the user's grant (after a consent or an import).

        Keeps every other metadata key and column, clears any recorded refresh failure.

        Raises:
            InvalidUserIdError; ValueError for credentials without any token;
            InvalidTokenRecordError when the credentials' token_uri is refused.
        """
        uid = parse_user_id(user_id)
        if not isinstance(credentials, Credentials):
            raise ValueError("credentials must be google.oauth2.credentials.Credentials")
        if not credentials.token and not credentials.refresh_token:
            raise ValueError("credentials hold neither an access token nor a refresh token")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("metadata must be a dict")
        if credentials.token_uri and (refusal := self._token_uri_refusal(credentials.token_uri)):
            raise InvalidTokenRecordError(uid, email, refusal)

        def work(conn: Connection, _progress: _Progress) -> TokenRecord:
            with conn.transaction():
                row = conn.execute(_LOCK_ROW, (uid,), prepare=self._prepare).fetchone()
                existing = self._parse(row) if row is not None else None
                values = grant_columns(
                    existing=existing,
                    access_token=credentials.token,
                    refresh_token=credentials.refresh_token,
                    client_id=credentials.client_id,
                    client_secret=credentials.client_secret,
                    token_uri=credentials.token_uri,
                    scopes=credentials.scopes,
                    expiry=credentials.expiry,
                    email=email,
                    metadata=metadata,
                )
                params = {
                    "user_id": uid,
                    "robeing_id": robeing_id,
                    "token_data": Jsonb(values.token_data),
                    "oauth_config": Jsonb(values.oauth_config) if values.oauth_config else None,
                    "scopes": Jsonb(values.scopes) if values.scopes is not None else None,
                    "metadata": Jsonb(values.metadata),
                    "expiry": values.expiry,
                }
                # ON CONFLICT covers a concurrent first save of the same user.
                saved = conn.execute(
                    "INSERT INTO gmail_token"
                    " (user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry)"
                    " VALUES (%(user_id)s, %(robeing_id)s, %(token_data)s, %(oauth_config)s,"
                    " %(scopes)s, %(metadata)s, %(expiry)s)"
                    " ON CONFLICT (user_id) DO UPDATE SET"
                    " robeing_id = COALESCE(EXCLUDED.robeing_id, gmail_token.robeing_id),"
                    " token_data = EXCLUDED.token_data,"
                    " oauth_config = COALESCE(EXCLUDED.oauth_config, gmail_token.oauth_config),"
                    " scopes = COALESCE(EXCLUDED.scopes, gmail_token.scopes),"
                    " metadata = EXCLUDED.metadata, expiry = EXCLUDED.expiry,"
                    " updated_at = CURRENT_TIMESTAMP" + _RETURNING,
                    params,
                    prepare=self._prepare,
                ).fetchone()
                assert saved is not None  # noqa: S101 - RETURNING always yields the row
                return self._parse(saved)

        record = self._run(work)
        logger.info(
            "saved the Gmail grant of %s, token expires %s",
            describe_user(record.user_id, record.email),
            record.expiry,
        )
        if self._cache is not None:
            self._cache.invalidate(record.user_id)

    def invalidate(self, user_id: object) -> None:
        """Forget the user's cached credentials; the next call reads the row."""
        uid = parse_user_id(user_id)
        if self._cache is not None:
            self._cache.invalidate(uid)

    # --- reading -----------------------------------------------------------------------

    def _parse(self, row: Sequence[Any]) -> TokenRecord:
        return parse_row(row, fallback_client=self._fallback_client)

    def _token_uri_refusal(self, token_uri: str) -> str | None:
        # Rows share a handful of token URIs: remember the verdicts (bounded).
        verdicts = self._token_uri_verdicts
        try:
            return verdicts[token_uri]
        except KeyError:
            if len(verdicts) > 1000:
                verdicts.clear()
            verdict = verdicts[token_uri] = token_uri_refusal(token_uri, self._allowed_hosts)
            return verdict

    def _read(self, uid: str) -> TokenRecord:
        """The hot path: one autocommit SELECT, no lock."""

        def work(conn: Connection, _progress: _Progress) -> tuple[Any, ...] | None:
            return _hot_cursor(conn).execute(_SELECT_ROW, (uid,), prepare=self._prepare).fetchone()

        row = self._run(work)
        if row is None:
            raise TokenNotFoundError(uid)
        return self._parse(row)

    def _status_of(self, record: TokenRecord, *, db_now: datetime) -> TokenStatus:
        """Classify one row; `db_now` is the server's LOCALTIMESTAMP when it was read."""
        left = record.seconds_left(time.time())
        problem = self._unusable_because(record)
        reauth = record.reauth_reason if problem is None else None
        # updated_at and LOCALTIMESTAMP come from the same server clock and zone.
        since_refresh = db_now - record.updated_at if record.updated_at is not None else None
        idle = since_refresh is not None and since_refresh > IDLE_AFTER
        state: TokenState
        if problem:
            state = "broken"
        elif reauth:
            state = "reauth-required"
        elif idle:
            state = "idle"
        elif left <= 0:
            state = "expired"
        elif left < self.refresh_margin:
            state = "refresh-due"
        else:
            state = "ok"
        failure = record.failure
        return TokenStatus(
            status="found",
            user_id=record.user_id,
            state=state,
            email=record.email,
            robeing_id=record.robeing_id,
            has_token=bool(record.access_token or record.refresh_token),
            has_access_token=bool(record.access_token),
            has_refresh_token=bool(record.refresh_token),
            has_oauth_config=record.client_in_row,
            is_expired=left <= 0,
            remaining_seconds=max(int(left), 0) if math.isfinite(left) else None,
            needs_refresh=left < self.refresh_margin,
            needs_reauth=reauth is not None,
            problem=problem or reauth,
            last_error=dataclasses.asdict(failure) if failure else None,
            expiry=record.expiry,
            last_refreshed=record.updated_at,
            seconds_since_refresh=(
                int(since_refresh.total_seconds()) if since_refresh is not None else None
            ),
            scopes=record.scopes,
        )

    # --- freshness -----------------------------------------------------------------------

    def _is_due(self, record: TokenRecord) -> bool:
        return record.seconds_left(time.time()) < self.refresh_margin

    def _unusable_because(self, record: TokenRecord, *, refreshing: bool = True) -> str | None:
        """Why the row cannot be used (or, with `refreshing`, refreshed), or None."""
        if record.problem:
            return record.problem
        refusal = self._token_uri_refusal(record.token_uri)
        if refusal:
            return refusal
        if refreshing and record.refresh_token and not record.has_client:
            return (
                "no OAuth client id/secret (oauth_config, token_data, or "
                "GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET)"
            )
        return None

    def _raise_if_unusable(self, record: TokenRecord, *, refreshing: bool = True) -> None:
        problem = self._unusable_because(record, refreshing=refreshing)
        if problem:
            raise InvalidTokenRecordError(record.user_id, record.email, problem)
        reason = record.reauth_reason
        if reason:
            raise ReauthRequiredError(record.user_id, record.email, reason)

    def _fresh(self, record: TokenRecord) -> TokenRecord:
        """Return `record` if it has `refresh_margin` left, else a refreshed one."""
        # A fresh token is served even without an OAuth client; the refresh would need one
        # and checks again under the lock.
        self._raise_if_unusable(record, refreshing=False)
        left = record.seconds_left(time.time())
        if left >= self.refresh_margin:
            return record
        return self._refresh_shared(
            record,
            self._is_due,
            blocking=left <= self.mandatory_refresh_margin,
            stale_ok=lambda candidate: candidate.seconds_left(time.time()) > 0,
        )

    def _adopt_or_refresh(self, user_id: str, rejected_token: str | None) -> TokenRecord:
        """For handed-out Credentials: a token other than `rejected_token`, refreshed if need be."""
        seen = self._read(user_id)
        self._raise_if_unusable(seen)
        if seen.access_token != rejected_token and not self._is_due(seen):
            self._remember(seen)
            return seen

        def replace_rejected(record: TokenRecord) -> bool:
            return record.access_token == rejected_token or self._is_due(record)

        def usable(candidate: TokenRecord) -> bool:
            return (
                candidate.access_token != rejected_token and candidate.seconds_left(time.time()) > 0
            )

        record = self._refresh_shared(seen, replace_rejected, blocking=True, stale_ok=usable)
        self._remember(record)
        return record

    def _refresh_shared(
        self,
        seen: TokenRecord,
        needs_refresh: Callable[[TokenRecord], bool],
        *,
        blocking: bool,
        stale_ok: Callable[[TokenRecord], bool] | None,
    ) -> TokenRecord:
        """Refresh `seen`'s row unless `needs_refresh` says otherwise once the lock is held.

        Threads of this process share one refresh per user. With `blocking=False` a caller
        that finds a refresh already running (here or in another process) gets `seen` back
        at once. On a transient failure `seen` is served while `stale_ok(seen)` holds.
        """
        uid = seen.user_id
        started = time.monotonic()
        deadline = started + self._flight_timeout
        try:
            for _ in range(3):  # a follower whose leader's result does not suit it goes again

                def lead() -> TokenRecord:
                    return self._refresh_in_transaction(seen, needs_refresh, blocking=blocking)

                record, led = self._flights.run(
                    uid, lead, wait=blocking, timeout=deadline - time.monotonic()
                )
                if record is None:  # someone in this process is refreshing; ours is still valid
                    return seen
                if led or not needs_refresh(record) or not blocking:
                    return record
            raise RefreshFailedError(uid, seen.email, "the row kept changing while we waited")
        except FlightTimeoutError:
            failure = RefreshFailedError(uid, seen.email, "another thread's refresh took too long")
            return self._serve_stale_or_raise(seen, stale_ok, failure, started)
        except RefreshFailedError as failure:
            return self._serve_stale_or_raise(seen, stale_ok, failure, started)

    def _serve_stale_or_raise(
        self,
        seen: TokenRecord,
        stale_ok: Callable[[TokenRecord], bool] | None,
        failure: RefreshFailedError,
        started: float,
    ) -> TokenRecord:
        if stale_ok is None or not stale_ok(seen):
            raise failure
        left = seen.seconds_left(time.time())
        logger.warning(
            "serving the still-valid Gmail token of %s (%d s left) because the refresh failed: %s",
            describe_user(seen.user_id, seen.email),
            left,
            failure.reason,
        )
        self._emit("served_stale", seen, started, error=failure.reason)
        return seen

    # --- the locked refresh --------------------------------------------------------------

    def _refresh_in_transaction(
        self, seen: TokenRecord, needs_refresh: Callable[[TokenRecord], bool], *, blocking: bool
    ) -> TokenRecord:
        started = time.monotonic()
        revoked: ReauthRequiredError | None = None
        refreshed = False
        unsaved: tuple[TokenRecord, Grant, bool] | None = None  # a grant not yet written back

        def work(conn: Connection, progress: _Progress) -> TokenRecord:
            nonlocal revoked, refreshed, unsaved
            with _transaction(conn):
                try:
                    cursor = conn.execute(
                        self._lock_statement(conn, seen.user_id, blocking), prepare=False
                    )
                    while cursor.nextset():  # to the SELECT's result
                        pass
                except psycopg.errors.LockNotAvailable:
                    self._emit("lock_timeout", seen, started, error="lock_timeout")
                    raise RefreshFailedError(
                        seen.user_id,
                        seen.email,
                        f"another process held the row lock for more than {self.lock_timeout:g} s",
                    ) from None
                row = cursor.fetchone()
                if row is None:
                    if blocking:
                        raise TokenNotFoundError(seen.user_id)
                    return seen  # locked by a refresher in another process: keep ours
                record = self._parse(row)
                if not needs_refresh(record):
                    return record  # refreshed by someone else while we waited
                self._raise_if_unusable(record)
                # _raise_if_unusable guarantees these; the asserts narrow the types.
                assert record.refresh_token  # noqa: S101
                assert record.client_id  # noqa: S101
                assert record.client_secret  # noqa: S101
                progress.contacted_endpoint = True
                try:
                    grant = self._endpoint.refresh(
                        token_uri=record.token_uri,
                        refresh_token=record.refresh_token,
                        client_id=record.client_id,
                        client_secret=record.client_secret,
                    )
                except EndpointError as exc:
                    if exc.kind != "revoked":
                        raise self._endpoint_failure(record, exc, started) from exc
                    revoked = self._record_revocation(conn, record, exc, started)
                    return record
                expiry_type_has_tz = cursor.description is not None and (
                    cursor.description[7].type_code == _TIMESTAMPTZ_OID
                )
                # Until the commit succeeds the grant exists only here.
                unsaved = (record, grant, expiry_type_has_tz)
                updated = self._write_grant(conn, record, grant, expiry_type_has_tz)
                assert updated is not None  # noqa: S101 - the row is locked by us
                refreshed = True
                return updated

        try:
            record = self._run(work)
        except DatabaseUnavailableError:
            if unsaved is None:
                raise
            # The write-back or its commit failed with the connection: the grant must not be
            # lost (if the commit did land, the compare-and-set finds the row changed).
            record = self._save_late(*unsaved)
            refreshed = True
        if revoked is not None:
            raise revoked  # after the commit: the failure is recorded for everyone
        if refreshed:
            logger.info(
                "refreshed the Gmail token of %s; it expires %s",
                describe_user(record.user_id, record.email),
                record.expiry,
            )
            self._emit("refreshed", record, started)
        return record

    def _write_grant(
        self,
        conn: Connection,
        record: TokenRecord,
        grant: Grant,
        expiry_type_has_tz: bool,
        *,
        only_if_unchanged: bool = False,
    ) -> TokenRecord | None:
        """Write a grant into `record`'s row; return the row as written.

        `only_if_unchanged` makes it a compare-and-set for use without the row lock: the
        write happens only if nobody wrote the row since `record` was read.
        """
        cleaned_metadata = metadata_without_failure(record)
        expiry: datetime = grant.expiry.replace(tzinfo=UTC) if expiry_type_has_tz else grant.expiry
        guard = (
            " AND updated_at IS NOT DISTINCT FROM %s AND token_data = %s"
            if only_if_unchanged
            else ""
        )
        params: list[Any] = [
            Jsonb(refreshed_token_data(record, grant.access_token, grant.rotated_refresh_token)),
            expiry,
            Jsonb(list(grant.scopes)) if grant.scopes is not None else None,
            cleaned_metadata is not None,
            Jsonb(cleaned_metadata) if cleaned_metadata is not None else None,
            record.row_id,
        ]
        if only_if_unchanged:
            params += [record.updated_at, Jsonb(record.token_data)]
        row = conn.execute(
            "UPDATE gmail_token SET token_data = %s, expiry = %s,"
            " scopes = COALESCE(%s, scopes),"
            " metadata = CASE WHEN %s THEN %s ELSE metadata END,"
            " updated_at = CURRENT_TIMESTAMP WHERE id = %s" + guard + _RETURNING,
            params,
            prepare=self._prepare,
        ).fetchone()
        return self._parse(row) if row is not None else None

    def _save_late(
        self, record: TokenRecord, grant: Grant, expiry_type_has_tz: bool
    ) -> TokenRecord:
        """Save a grant whose write-back failed with the connection; hand it out regardless.

        The lock died with that connection, so this is a compare-and-set on a fresh one: it
        writes only if nobody wrote the row since we read it under the lock. Either way the
        caller gets the new token, which is valid; what must not be lost is a rotated
        refresh token, and that is only lost if the database stays unreachable.
        """
        in_memory = dataclasses.replace(
            record,
            access_token=grant.access_token,
            refresh_token=grant.rotated_refresh_token or record.refresh_token,
            expiry=grant.expiry,
            expiry_epoch=epoch(grant.expiry),
        )

        def work(conn: Connection, _progress: _Progress) -> TokenRecord | None:
            with conn.transaction():
                return self._write_grant(
                    conn, record, grant, expiry_type_has_tz, only_if_unchanged=True
                )

        try:
            saved = self._run(work)
        except DatabaseUnavailableError:
            saved = None
            outcome = "the database is unreachable"
        else:
            outcome = "another writer changed the row meanwhile"
        if saved is not None:
            return saved
        logger.warning(
            "refreshed the Gmail token of %s but could not save it (%s); serving it unsaved",
            describe_user(record.user_id, record.email),
            outcome,
        )
        return in_memory

    def _lock_statement(self, conn: Connection, user_id: str, blocking: bool) -> str:
        """BEGIN, the transaction-local timeouts and the row lock, in one round trip.

        Sent as one simple-protocol query, so nothing in it is a bound parameter: the user
        id is a canonical UUID (parse_user_id) quoted by psycopg, the timeouts are ours.
        A connection that is not in autocommit has already begun (psycopg does it).
        """
        lock = _LOCK_ROW if blocking else _LOCK_ROW + " SKIP LOCKED"
        select = sql.SQL(lock.replace("%s", "{}")).format(sql.Literal(user_id))
        begin = "BEGIN; " if conn.autocommit else ""
        return f"{begin}{self._set_timeouts}; {select.as_string(conn)}"

    def _record_revocation(
        self, conn: Connection, record: TokenRecord, exc: EndpointError, started: float
    ) -> ReauthRequiredError:
        now = utc_naive(datetime.now(UTC))
        metadata = metadata_with_failure(record, exc.error, exc.description, now)
        if metadata is not None:
            conn.execute(
                "UPDATE gmail_token SET metadata = %s WHERE id = %s",
                (Jsonb(metadata), record.row_id),
                prepare=self._prepare,
            )
        logger.warning(
            "the Gmail grant of %s is dead (%s: %s); the user must re-authorize",
            describe_user(record.user_id, record.email),
            exc.error,
            exc.description,
        )
        self._emit("reauth_required", record, started, error=exc.error)
        if self._cache is not None:
            self._cache.invalidate(record.user_id)
        detail = f" ({exc.description})" if exc.description else ""
        return ReauthRequiredError(
            record.user_id, record.email, f"the token endpoint answered {exc.error}{detail}"
        )

    def _endpoint_failure(
        self, record: TokenRecord, exc: EndpointError, started: float
    ) -> TokenStoreError:
        self._emit("refresh_failed", record, started, error=exc.error)
        if exc.kind == "client":
            return OAuthClientError(record.user_id, record.email, exc.error, exc.description)
        detail = f" ({exc.description})" if exc.description else ""
        return RefreshFailedError(
            record.user_id, record.email, exc.error + detail, retryable=exc.kind == "transient"
        )

    # --- handing out -----------------------------------------------------------------------

    def _remember(self, record: TokenRecord) -> Credentials:
        credentials = credentials_for(record, self._adopt_or_refresh, self._windows)
        if self._cache is not None:
            self._cache.put(
                record.user_id,
                credentials,
                frozenset(record.scopes) if record.scopes is not None else None,
                seconds_left=record.seconds_left(time.time()),
                refresh_margin=self.refresh_margin,
            )
        return credentials

    # --- events --------------------------------------------------------------------------

    def _emit(
        self, kind: Any, record: TokenRecord, started: float, *, error: str | None = None
    ) -> None:
        hook = self._on_event
        if hook is None:
            return
        event = TokenEvent(
            kind=kind,
            user_id=record.user_id,
            email=record.email,
            duration=time.monotonic() - started,
            error=error,
        )
        try:
            hook(event)
        except Exception:
            logger.exception("the on_event hook raised for a %s event; ignored", kind)

    # --- connections ---------------------------------------------------------------------

    def _run(self, work: Callable[[Connection, _Progress], T]) -> T:
        """Run `work` on a pooled connection; retry once on a fresh one if the first broke.

        The retry only happens while `work` has not contacted the token endpoint: a read
        or a refresh that had not yet sent its request is safe to run again.
        """
        if self._closed:
            raise TokenStoreError("this TokenStore is closed")
        progress = _Progress()
        pool = self._pool
        for attempt in range(2):
            conn: Connection | None = None
            try:
                # getconn/putconn rather than pool.connection(): its `with conn` block costs
                # a commit check per call on the hot path. Transactions are explicit
                # (conn.transaction()); a pool handed to us may not be autocommit, so an
                # implicit transaction left by a read is ended here, not by a pool warning.
                conn = pool.getconn()
                try:
                    result = work(conn, progress)
                    if conn.info.transaction_status is not _IDLE:
                        conn.commit()
                    return result
                finally:
                    pool.putconn(conn)
            except PoolTimeout as exc:
                raise DatabaseUnavailableError(
                    f"no database connection within {self._connect_timeout:g} s; "
                    "check that PostgreSQL is up and the DSN is right, then retry"
                ) from exc
            except psycopg.OperationalError as exc:
                if (
                    attempt == 0
                    and conn is not None
                    and conn.broken
                    and not progress.contacted_endpoint
                ):
                    logger.info("database connection lost (%s); retrying once", type(exc).__name__)
                    # Connections idle in the pool died with this one (a server restart):
                    # test them now, so the retry runs on one that works.
                    self._pool.check()
                    continue
                raise DatabaseUnavailableError(
                    f"the database connection failed ({type(exc).__name__}); retry later"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled connection for the CLI's table-wide operations."""
        with self._pool.connection() as conn:
            yield conn


@contextmanager
def _transaction(conn: Connection) -> Iterator[None]:
    """Commit what the block did, or roll it back if it raised (BEGIN is the caller's)."""
    try:
        yield
    except BaseException:
        if not conn.closed:
            with suppress(psycopg.Error):
                conn.rollback()
        raise
    conn.commit()


def _hot_cursor(conn: Connection) -> psycopg.Cursor[tuple[Any, ...]]:
    """The connection's cursor for the hot path, made once per connection.

    `conn.execute()` builds and discards a cursor per call, which costs about a fifth of
    a loopback round trip. A pooled connection serves one thread at a time, so its cursor
    does too; it is closed with the connection.
    """
    cursor: psycopg.Cursor[tuple[Any, ...]] | None = getattr(conn, _HOT_CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor()
        setattr(conn, _HOT_CURSOR, cursor)
    return cursor


def _covers(granted: frozenset[str] | None, wanted: Sequence[str]) -> bool:
    return granted is not None and granted.issuperset(wanted)


def _require_scopes(record: TokenRecord, scopes: Sequence[str] | None) -> None:
    if scopes is None:
        return
    granted = set(record.scopes or ())
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise InsufficientScopesError(record.user_id, record.email, missing)
