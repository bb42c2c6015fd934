"""What only the asyncio store has to show: herds of coroutines, cancellation, the event loop
left free, Credentials refreshed from worker threads, the module-level coroutine.

(Every shared behaviour also runs against AsyncTokenStore through `helpers.AsyncFacade`.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Any, TypeVar

import google.auth.aio.transport
import google.auth.exceptions
import google.auth.transport.requests
import httpx
import psycopg
import pytest
from google.auth.aio.transport.sessions import AsyncAuthorizedSession

import gmail_token_store
from gmail_token_store import AsyncTokenStore, TokenStoreError
from gmail_token_store.testing import FakeTokenEndpoint, FaultProxy, PostgresServer

from conftest import SeedRow
from helpers import FakeGmailApi, run_herd

T = TypeVar("T")
OPTIONS: dict[str, Any] = {"cache_ttl": 0, "http_timeout": 2.0, "lock_timeout": 5.0}


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def test_fifty_coroutines_on_one_expired_token_make_one_request(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.2
    row = seed(expires_in=-5)

    async def herd() -> list[str | None]:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:
            answers = await asyncio.gather(*(store.get_credentials(row.user_id) for _ in range(50)))
            return [credentials.token for credentials in answers]

    tokens = run(herd())
    [request] = endpoint.refresh_requests()
    assert tokens == [request.issued_access_token] * 50


def test_sync_and_async_processes_on_one_expired_token_make_one_request(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.2
    row = seed(expires_in=-5)
    outcomes = run_herd(
        dsn,
        row.user_id,
        processes=2,
        threads=4,
        async_processes=2,
        coroutines=8,
        store_options={"cache_ttl": 0, "lock_timeout": 30},
    )
    [request] = endpoint.refresh_requests()
    assert [token for token, _ in outcomes] == [request.issued_access_token] * 24


def test_other_coroutines_run_while_a_refresh_waits_for_the_endpoint(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.5
    due, fresh = seed(expires_in=-5), seed(expires_in=3000)
    finished: list[str] = []

    async def both() -> None:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:

            async def refresh() -> None:
                await store.get_credentials(due.user_id)
                finished.append("refresh")

            async def others() -> None:
                for _ in range(20):
                    await store.get_credentials(fresh.user_id)
                finished.append("twenty reads")

            await asyncio.gather(refresh(), others())

    run(both())
    assert finished == ["twenty reads", "refresh"]  # the reads did not queue behind it


def _our_sessions(dsn: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, query FROM pg_stat_activity"
            " WHERE datname = 'test' AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        ).fetchall()
    return [(state, query) for state, query in rows]


def _row_is_free(dsn: str, user_id: str) -> bool:
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute(
                "SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE NOWAIT", (user_id,)
            )
        except psycopg.errors.LockNotAvailable:
            return False
    return True


def test_a_call_cancelled_during_the_token_request_leaves_no_lock_and_no_busy_connection(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 1.0
    row = seed(expires_in=-5)

    async def cancelled_then_again() -> str | None:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.get_credentials(row.user_id), 0.3)
            assert _row_is_free(dsn, row.user_id)  # the lock went with the cancelled call
            assert [s for s, _ in _our_sessions(dsn) if s != "idle"] == []
            return (await store.get_credentials(row.user_id)).token

    token = run(cancelled_then_again())
    assert token == endpoint.refresh_requests()[-1].issued_access_token


def test_a_call_cancelled_mid_query_leaves_no_connection_mid_query(
    postgres: PostgresServer, dsn: str, seed: SeedRow
) -> None:
    row = seed(expires_in=3000)
    with FaultProxy(postgres.port) as proxy:

        async def cancelled_read() -> str | None:
            async with AsyncTokenStore(
                proxy.dsn(dsn), allow_loopback_token_uri=True, **OPTIONS
            ) as store:
                await store.check(row.user_id)
                proxy.delay(1.0)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(store.get_credentials(row.user_id), 0.2)
                proxy.heal()
                return (await store.get_credentials(row.user_id)).token

        assert run(cancelled_read()) == row.access_token
    assert [s for s, _ in _our_sessions(dsn) if s not in ("idle", None)] == []


def test_a_call_cancelled_between_answer_and_write_secures_the_grant_first(
    postgres: PostgresServer, dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.rotate_refresh_tokens = True
    endpoint.revoke_rotated = True
    row = seed(expires_in=-5)
    with FaultProxy(postgres.port) as proxy:
        endpoint.on_request = lambda _token: proxy.delay(1.5)  # the write-back will hang...
        threading.Timer(1.0, proxy.heal).start()

        async def cancelled_write() -> None:
            async with AsyncTokenStore(
                proxy.dsn(dsn), allow_loopback_token_uri=True, **OPTIONS
            ) as store:
                with pytest.raises(TimeoutError):  # ...when the caller gives up
                    await asyncio.wait_for(store.get_credentials(row.user_id), 0.5)

        run(cancelled_write())
        endpoint.on_request = None
    [request] = endpoint.refresh_requests()
    with psycopg.connect(dsn) as conn:
        stored = conn.execute(
            "SELECT token_data->>'refresh_token' FROM gmail_token WHERE user_id = %s",
            (row.user_id,),
        ).fetchone()
    assert stored == (request.issued_refresh_token,)
    assert _row_is_free(dsn, row.user_id)


def test_credentials_refresh_through_the_store_from_a_worker_thread(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    gmail_api: FakeGmailApi,
) -> None:
    row = seed(expires_in=3000)  # valid by its expiry, yet the API answers 401

    async def send() -> int:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:
            credentials = await store.get_credentials(row.user_id)

            def call_gmail() -> int:  # what googleapiclient does, in a worker thread
                with google.auth.transport.requests.AuthorizedSession(credentials) as session:
                    status: int = session.get(gmail_api.url, timeout=10).status_code
                    return status

            return await asyncio.to_thread(call_gmail)

    assert run(send()) == 200
    [request] = endpoint.refresh_requests()
    assert gmail_api.seen == [row.access_token, request.issued_access_token]


def test_credentials_refreshed_on_the_event_loops_own_thread_refuse_instead_of_blocking(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    row = seed(expires_in=3000)

    async def blocking_refresh() -> None:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:
            credentials = await store.get_credentials(row.user_id)
            with pytest.raises(google.auth.exceptions.RefreshError, match="worker thread"):
                credentials.refresh(google.auth.transport.requests.Request())

    run(blocking_refresh())
    assert endpoint.requests == []


def test_module_level_coroutine_uses_one_store_from_the_environment(
    dsn: str, seed: SeedRow, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = seed(expires_in=3000)
    monkeypatch.setenv("GMAIL_TOKEN_STORE_DSN", dsn)
    monkeypatch.setattr(gmail_token_store._default, "_async_store", None)

    async def twice() -> list[str | None]:
        first = await gmail_token_store.get_credentials_async(row.user_id)
        second = await gmail_token_store.get_credentials_async(row.user_id)
        return [first.token, second.token]

    try:
        assert run(twice()) == [row.access_token] * 2
        assert run(twice()) == [row.access_token] * 2  # a second event loop, the same store
    finally:
        store = gmail_token_store._default._async_store
        assert store is not None
        run(store.aclose())


def test_a_closed_async_store_refuses_calls(dsn: str, seed: SeedRow) -> None:
    row = seed()

    async def closed() -> None:
        store = AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS)
        await store.aclose()
        with pytest.raises(TokenStoreError, match="closed"):
            await store.get_credentials(row.user_id)

    run(closed())


class _HttpxResponse(google.auth.aio.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def content(  # type: ignore[override]  # google-auth declares a coroutine
        self, chunk_size: int = 1024
    ) -> AsyncGenerator[bytes, None]:
        for start in range(0, len(self._response.content), chunk_size):
            yield self._response.content[start : start + chunk_size]

    async def read(self) -> bytes:
        return self._response.content

    async def close(self) -> None:
        await self._response.aclose()


class _HttpxRequest(google.auth.aio.transport.Request):
    """google-auth's async transport interface over httpx (google-auth ships aiohttp's)."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient()

    async def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
        **_kwargs: Any,
    ) -> google.auth.aio.transport.Response:
        response = await self._client.request(
            method, url, content=body, headers=headers, timeout=timeout
        )
        return _HttpxResponse(response)

    async def close(self) -> None:
        await self._client.aclose()


def test_google_auths_async_authorized_session_refreshes_through_the_store(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, gmail_api: FakeGmailApi
) -> None:
    row = seed(expires_in=3000)  # valid by its expiry, yet the API answers 401

    async def call() -> int:
        async with AsyncTokenStore(dsn, allow_loopback_token_uri=True, **OPTIONS) as store:
            credentials = await store.get_credentials(row.user_id)
            session = AsyncAuthorizedSession(credentials, auth_request=_HttpxRequest())
            try:
                response = await session.request("GET", gmail_api.url)
                return response.status_code
            finally:
                await session.close()

    assert run(call()) == 200
    [request] = endpoint.refresh_requests()
    assert gmail_api.seen == [row.access_token, request.issued_access_token]
