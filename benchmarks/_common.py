"""Shared set-up for the benchmarks: a throwaway PostgreSQL with the seed table, rows, tables."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND, TokenStoreError, create_table
from gmail_token_store.testing import PostgresServer, throwaway_postgresql


@contextmanager
def database() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL holding an empty gmail_token table."""
    with throwaway_postgresql() as server:
        create_table(server.dsn)
        yield server


def insert_rows(dsn: str, count: int, *, expires_in: float, token_uri: str) -> list[str]:
    """Insert `count` rows in the seed's layout; return their user ids."""
    expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=expires_in)
    user_ids = [str(uuid.uuid4()) for _ in range(count)]
    oauth_config = Jsonb(
        {"client_id": "bench-client", "client_secret": "bench-secret", "token_uri": token_uri}
    )
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO gmail_token (user_id, token_data, oauth_config, scopes, metadata, expiry)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    user_id,
                    Jsonb(
                        {
                            "access_token": f"ya29.bench-{index:08d}-" + "a" * 120,
                            "refresh_token": f"1//bench-refresh-{index:08d}",
                            "token_type": "Bearer",
                        }
                    ),
                    oauth_config,
                    Jsonb([GMAIL_SEND]),
                    Jsonb({"email": f"user{index}@gmail.com", "source_file": "token.json"}),
                    expiry,
                )
                for index, user_id in enumerate(user_ids)
            ],
        )
    return user_ids


def call_until(
    stop: threading.Event, call: Callable[[], object], successes: list[float], interval: float
) -> None:
    """Call `call` every `interval` seconds until `stop`; note when each call succeeded."""
    while not stop.is_set():
        try:
            call()
            successes.append(time.monotonic())
        except TokenStoreError:
            pass
        time.sleep(interval)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def verdict(value: float, limit: float, *, at_least: bool = False) -> str:
    """Whether `value` is at most `limit` (or, `at_least`, at least `limit`)."""
    met = value >= limit if at_least else value <= limit
    return "meets target" if met else "MISSES target"
