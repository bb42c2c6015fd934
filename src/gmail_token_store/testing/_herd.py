"""Herds: many processes of many threads calling get_credentials at the same moment."""

from __future__ import annotations

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
    threads: int
    store_options: dict[str, Any]


def _herd_member(order: _HerdOrder, start: Any, results: Any) -> None:
    """One process of a herd (runs in a spawned child): `threads` callers released together."""
    from gmail_token_store import TokenStore  # noqa: PLC0415 - imported in the child

    user_id = order.user_id
    with TokenStore(order.dsn, **order.store_options) as store:
        store.check(user_id)  # open a connection first, so the herd starts together
        local_start = threading.Barrier(order.threads)

        def call() -> None:
            local_start.wait(timeout=60)
            began = time.monotonic()
            try:
                token = store.get_credentials(user_id).token
                results.put(HerdCall(token, time.monotonic() - began))
            except Exception as exc:  # reported to the parent, which decides
                error = f"{type(exc).__name__}: {exc}"
                results.put(HerdCall(None, time.monotonic() - began, error))

        callers = [threading.Thread(target=call) for _ in range(order.threads)]
        start.wait(timeout=120)
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)


def run_herd(
    dsn: str,
    user_id: str,
    *,
    processes: int,
    threads: int,
    store_options: dict[str, Any] | None = None,
    timeout: float = 120.0,
) -> list[HerdCall]:
    """Call get_credentials from `processes` x `threads` callers released at one moment.

    Each process is started with "spawn" and builds its own TokenStore(dsn, **store_options),
    like a separate replica of a service.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    members = [
        context.Process(
            target=_herd_member,
            args=(_HerdOrder(dsn, user_id, threads, store_options or {}), start, results),
        )
        for _ in range(processes)
    ]
    for member in members:
        member.start()
    calls: list[HerdCall] = []
    deadline = time.monotonic() + timeout
    try:
        while len(calls) < processes * threads and time.monotonic() < deadline:
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
    missing = processes * threads - len(calls)
    exits = [member.exitcode for member in members]
    lost = HerdCall(None, 0.0, f"no answer from this caller (process exit codes {exits})")
    return calls + [lost] * missing
