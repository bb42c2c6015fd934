"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from gmail_token_store import testing

T = TypeVar("T")


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def call_together(callers: int, call: Callable[[], T]) -> list[T]:
    """Run `call` from `callers` threads released at the same moment; return the results."""
    barrier = threading.Barrier(callers)
    results: list[T] = []

    def caller() -> None:
        barrier.wait(timeout=10)
        results.append(call())

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def run_herd(
    dsn: str, user_id: str, *, processes: int, threads: int, store_options: dict[str, Any]
) -> list[tuple[str, float]]:
    """The herd from gmail_token_store.testing; fails the test if any caller failed."""
    calls = testing.run_herd(
        dsn, user_id, processes=processes, threads=threads, store_options=store_options
    )
    errors = [call.error for call in calls if call.error]
    assert not errors, errors
    return [(call.token or "", call.seconds) for call in calls]


class StatementCounter:
    """Counts what a connection sends, from libpq's protocol trace."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()

    def attach(self, conn: psycopg.Connection[Any]) -> None:
        conn.pgconn.trace(self.file.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def reset(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def sent(self) -> list[str]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.seek(0)
        lines = [line.split("\t") for line in self.file.read().splitlines()]
        return [
            parts[2] + ":" + (parts[3] if len(parts) > 3 else "")
            for parts in lines
            if parts[0] == "F"
        ]

    def close(self) -> None:
        self.file.close()
