"""Herds: many processes of many threads calling get_credentials at the same moment."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class HerdCall:
    """One get_credentials call of a herd: the token it got (or the error), and how long."""

    token: str | None = field(repr=False)
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _HerdOrder:
    dsn: str = field(repr=False)
    user_id: str
    callers: int
    store_options: dict[str, Any]


def _herd_member(order: _HerdOrder, start: Any, results: Any) -> None:
    """One sync process of a herd (spawned): `callers` threads released together."""
    from gmail_token_store import TokenStore  # noqa: PLC0415 - imported in the child

    user_id = order.user_id
    with TokenStore(order.dsn, **order.store_options) as store:
        store.check(user_id)  # open a connection first, so the herd starts together
        local_start = threading.Barrier(order.callers)

        def call() -> None:
            local_start.wait(timeout=60)
            began = time.monotonic()
            try:
                token = store.get_credentials(user_id).token
                results.put(HerdCall(token, time.monotonic() - began))
            except Exception as exc:  # reported to the parent, which decides
                results.put(HerdCall(None, time.monotonic() - began, _described(exc)))

        callers = [threading.Thread(target=call) for _ in range(order.callers)]
        start.wait(timeout=120)
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)


def _async_herd_member(order: _HerdOrder, start: Any, results: Any) -> None:
    """One asyncio process of a herd (spawned): `callers` coroutines on one event loop."""
    from gmail_token_store import AsyncTokenStore  # noqa: PLC0415 - imported in the child

    async def call(store: AsyncTokenStore) -> None:
        began = time.monotonic()
        try:
            token = (await store.get_credentials(order.user_id)).token
            results.put(HerdCall(token, time.monotonic() - began))
        except Exception as exc:
            results.put(HerdCall(None, time.monotonic() - began, _described(exc)))

    async def herd() -> None:
        async with AsyncTokenStore(order.dsn, **order.store_options) as store:
            await store.check(order.user_id)
            await asyncio.to_thread(start.wait, 120)
            await asyncio.gather(*(call(store) for _ in range(order.callers)))

    asyncio.run(herd())


def _described(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_herd(
    dsn: str,
    user_id: str,
    *,
    processes: int,
    threads: int,
    async_processes: int = 0,
    coroutines: int = 0,
    store_options: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> list[HerdCall]:
    """Call get_credentials from `processes` x `threads` callers (TokenStore) and
    `async_processes` x `coroutines` callers (AsyncTokenStore), released at one moment.

    Each process is started with "spawn" and builds its own store(dsn, **store_options),
    like a separate replica of a service; the stores trust loopback token URIs (the fake
    Google) unless `store_options` says otherwise.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + async_processes)
    results = context.Queue()
    options = {"allow_loopback_token_uri": True, **(store_options or {})}
    members = [
        context.Process(
            target=target, args=(_HerdOrder(dsn, user_id, callers, options), start, results)
        )
        for target, count, callers in (
            (_herd_member, processes, threads),
            (_async_herd_member, async_processes, coroutines),
        )
        for _ in range(count)
    ]
    expected = processes * threads + async_processes * coroutines
    for member in members:
        member.start()
    calls: list[HerdCall] = []
    deadline = time.monotonic() + timeout
    try:
        while len(calls) < expected and time.monotonic() < deadline:
            try:
                calls.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(member.is_alive() for member in members):
                    break  # every process is gone: nothing more will come
    finally:
        for member in members:
            member.join(timeout=30)
            if member.is_alive():
                member.kill()
                member.join(timeout=10)
    missing = expected - len(calls)
    exits = [member.exitcode for member in members]
    lost = HerdCall(None, 0.0, f"no answer from this caller (process exit codes {exits})")
    return calls + [lost] * missing
