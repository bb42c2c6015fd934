"""The store's own pools (`_io/pool.py`, `_io/pool_async.py`) on a real PostgreSQL, with real
threads and real event loops: first come, first served (a connection given back goes to the
first waiter, never to a caller arriving after it); a waiter cancelled, interrupted or timed
out just as it is served passes on what it was handed; and the bookkeeping both share
(`PoolBook`), checked without a database.

The assertions count arrivals and hand-overs, not milliseconds: the bounds hold on a busy
two-core machine, and the pool these tests replaced fails them by two orders of magnitude.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import psycopg
import pytest

from gmail_token_store import AsyncTokenStore, DatabaseUnavailableError, TokenStore
from gmail_token_store._io.conninfo import conninfo_from
from gmail_token_store._io.pool import Pool
from gmail_token_store._io.pool_async import AsyncPool
from gmail_token_store._io.pool_book import PoolBook, Slot, Waiter

from conftest import SeedRow

#: 64 callers on 4 connections, each checking one out 15 times for a short query.
CALLERS, SIZE, ROUNDS = 64, 4, 15
SHORT_QUERY = "SELECT pg_sleep(0.001)"


def sync_pool(dsn: str, size: int = SIZE, connect_timeout: float = 10.0) -> Pool:
    return Pool(
        conninfo_from(dsn), max_size=size, connect_timeout=connect_timeout, prepare_threshold=None
    )


def async_pool(dsn: str, size: int = SIZE, connect_timeout: float = 10.0) -> AsyncPool:
    return AsyncPool(
        conninfo_from(dsn), max_size=size, connect_timeout=connect_timeout, prepare_threshold=None
    )


def most_overtaken(served: list[int]) -> int:
    """The most callers that arrived later than one caller and were served before it, given
    the callers' arrival numbers in the order they were served."""
    worst = 0
    for position, arrival in enumerate(served):
        worst = max(worst, sum(later > arrival for later in served[:position]))
    return worst


def checkouts_from_threads(dsn: str) -> list[tuple[int, float]]:
    """(arrival number, wait in seconds) of every checkout, in the order they were served."""
    pool = sync_pool(dsn)
    for conn in [pool.getconn() for _ in range(SIZE)]:  # opened first: see the test
        pool.putconn(conn)
    arrivals = itertools.count()
    served: list[tuple[int, float]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            for _ in range(ROUNDS):
                with lock:
                    arrival, started = next(arrivals), time.monotonic()
                conn = pool.getconn()
                with lock:
                    served.append((arrival, time.monotonic() - started))
                try:
                    conn.execute(SHORT_QUERY)
                finally:
                    pool.putconn(conn)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    pool.close()
    assert errors == []
    return served


async def checkouts_from_coroutines(dsn: str) -> list[tuple[int, float]]:
    pool = async_pool(dsn)
    for conn in [await pool.getconn() for _ in range(SIZE)]:
        await pool.putconn(conn)
    arrivals = itertools.count()
    served: list[tuple[int, float]] = []

    async def caller() -> None:
        for _ in range(ROUNDS):
            arrival, started = next(arrivals), time.monotonic()
            conn = await pool.getconn()
            served.append((arrival, time.monotonic() - started))
            try:
                await conn.execute(SHORT_QUERY)
            finally:
                await pool.putconn(conn)

    try:
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
    finally:
        await pool.close()
    return served


@pytest.mark.parametrize("kind", ["threads", "coroutines"])
def test_no_caller_is_overtaken_by_a_round_of_the_queue(dsn: str, kind: str) -> None:
    """64 callers on 4 connections: every one is served in its turn (nobody times out).

    The connections are opened first (they would open in any order). Coroutines on one
    loop are then served exactly in arrival order. A thread is numbered before it reaches
    the pool's lock and records its turn after it wakes, so the scheduler may let a few
    others in first; what FIFO rules out is a whole round of the queue (64 later arrivals)
    passing a waiter. The barging pool let ~880 of the 960 checkouts pass one waiter.
    """
    served = (
        checkouts_from_threads(dsn)
        if kind == "threads"
        else asyncio.run(checkouts_from_coroutines(dsn))
    )
    assert len(served) == CALLERS * ROUNDS
    waits = sorted(wait for _, wait in served)
    overtaken = most_overtaken([arrival for arrival, _ in served])
    figures = (
        f"overtaken by {overtaken}; waits: median {statistics.median(waits) * 1000:.1f} ms,"
        f" max {waits[-1] * 1000:.1f} ms"
    )
    if kind == "coroutines":
        assert overtaken == 0, figures
    else:
        assert overtaken < CALLERS, figures


@pytest.mark.parametrize("handed", ["connection", "slot"])
@pytest.mark.parametrize("served_from", ["its own loop", "another thread's loop"])
def test_a_coroutine_cancelled_as_it_is_served_passes_on_what_it_was_handed(
    dsn: str, handed: str, served_from: str
) -> None:
    """Served (a connection given back, or a slot freed by a failed one) and cancelled
    before it runs: the next waiter gets it, and the pool ends whole."""

    async def scenario() -> None:
        pool = async_pool(dsn, size=2)
        held = [await pool.getconn(), await pool.getconn()]
        first = asyncio.create_task(pool.getconn())
        second = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0)  # both in line
        assert len(pool._book._waiters) == 2
        freed = held.pop()
        release = pool.putconn(freed) if handed == "connection" else pool.discard(freed)
        if served_from == "its own loop":
            await release
        else:  # this loop is blocked meanwhile: `first` cannot run before it is cancelled
            other = threading.Thread(target=asyncio.run, args=(release,))
            other.start()
            other.join(timeout=10)
        assert first.done() is False
        first.cancel()
        conn = await asyncio.wait_for(second, 5)
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (conn is freed) is (handed == "connection")
        await pool.putconn(conn)
        await pool.putconn(held.pop())
        assert_whole(pool, size=2)
        await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("handed", ["connection", "slot"])
def test_a_thread_interrupted_as_it_is_served_passes_on_what_it_was_handed(
    dsn: str, handed: str
) -> None:
    """The interrupt's handler (on the waiting thread, inside its wait) gives a connection
    back, which goes to that same waiter, and raises: the waiter passes it on."""
    pool = sync_pool(dsn, size=2)
    held = [pool.getconn(), pool.getconn()]
    freed = held.pop()

    class Interrupted(Exception):
        pass

    def serve_then_interrupt(_signum: int, _frame: FrameType | None) -> None:
        assert len(pool._book._waiters) == 1  # the interrupted getconn, in line
        if handed == "connection":
            pool.putconn(freed)
        else:
            pool.discard(freed)
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, serve_then_interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            pool.getconn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pool.putconn(held.pop())
    assert_whole(pool, size=2 if handed == "connection" else 1)
    pool.close()


@pytest.mark.parametrize("kind", ["threads", "coroutines"])
def test_a_caller_that_waits_past_connect_timeout_leaves_nothing_behind(
    dsn: str, kind: str
) -> None:
    if kind == "threads":
        pool = sync_pool(dsn, size=1, connect_timeout=0.3)
        held = pool.getconn()
        with pytest.raises(DatabaseUnavailableError, match=r"stayed busy for 0\.3 s"):
            pool.getconn()
        assert len(pool._book._waiters) == 0
        pool.putconn(held)
        assert pool.getconn() is held  # at once: no one is in line
        pool.putconn(held)
        pool.close()
        return

    async def scenario() -> None:
        pool = async_pool(dsn, size=1, connect_timeout=0.3)
        held = await pool.getconn()
        with pytest.raises(DatabaseUnavailableError, match=r"stayed busy for 0\.3 s"):
            await pool.getconn()
        assert len(pool._book._waiters) == 0
        await pool.putconn(held)
        assert await pool.getconn() is held
        await pool.putconn(held)
        await pool.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["threads", "coroutines"])
def test_closing_the_pool_ends_every_wait(dsn: str, kind: str) -> None:
    if kind == "threads":
        pool = sync_pool(dsn, size=1)
        held = pool.getconn()
        errors: list[BaseException] = []

        def waiting() -> None:
            try:
                pool.getconn()
            except DatabaseUnavailableError as exc:
                errors.append(exc)

        thread = threading.Thread(target=waiting)
        thread.start()
        wait_for(lambda: len(pool._book._waiters) == 1)
        pool.close()
        thread.join(timeout=5)
        assert [str(exc) for exc in errors] == ["this store is closed"]
        pool.putconn(held)
        assert pool._book._size == 0
        return

    async def scenario() -> None:
        pool = async_pool(dsn, size=1)
        held = await pool.getconn()
        waiting = asyncio.create_task(pool.getconn())
        await asyncio.sleep(0)
        await pool.close()
        with pytest.raises(DatabaseUnavailableError, match="this store is closed"):
            await waiting
        await pool.putconn(held)
        assert pool._book._size == 0

    asyncio.run(scenario())


def test_coroutines_cancelled_at_random_under_load_leave_the_pool_whole(
    dsn: str, seed: SeedRow
) -> None:
    """Through the store: 64 coroutines on 4 connections, a third of them cancelled at
    random moments (in line, being served, mid-query); the survivors all get their token
    and the pool ends with its 4 connections idle, none in a transaction, none leaked."""
    row = seed(expires_in=3000)

    async def scenario() -> None:
        async with AsyncTokenStore(
            dsn, allow_loopback_token_uri=True, cache_ttl=0, max_connections=SIZE
        ) as store:

            async def caller() -> None:
                for _ in range(ROUNDS):
                    assert (await store.get_credentials(row.user_id)).token == row.access_token

            callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
            for victim in callers[::3]:
                await asyncio.sleep(0.002)
                victim.cancel()
            results = await asyncio.gather(*callers, return_exceptions=True)
            assert all(
                result is None or isinstance(result, asyncio.CancelledError) for result in results
            )
            assert sum(result is None for result in results) == CALLERS - len(callers[::3])
            pool = store._io.resources.get().pool
            assert isinstance(pool, AsyncPool)
            assert_whole(pool, size=pool._book._size)
            assert pool._book._size <= SIZE
            # Every slot is usable: SIZE checkouts at once, none waiting.
            conns = await asyncio.wait_for(
                asyncio.gather(*(pool.getconn() for _ in range(SIZE))), 5
            )
            for conn in conns:
                await pool.putconn(conn)

    asyncio.run(scenario())


def test_threads_on_the_sync_store_are_served_in_turn(dsn: str, seed: SeedRow) -> None:
    """Through the store: 64 threads on 4 connections, nobody waits past connect_timeout."""
    row = seed(expires_in=3000)
    with TokenStore(
        dsn, allow_loopback_token_uri=True, cache_ttl=0, max_connections=SIZE, connect_timeout=5
    ) as store:
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                for _ in range(ROUNDS):
                    assert store.get_credentials(row.user_id).token == row.access_token
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        pool = store._io.resources.get().pool
        assert isinstance(pool, Pool)
        assert_whole(pool, size=SIZE)


def assert_whole(pool: Pool | AsyncPool, *, size: int) -> None:
    """No one in line, every open connection idle in the pool and out of any transaction."""
    book: PoolBook[Any] = pool._book
    assert len(book._waiters) == 0
    assert book._size == size
    idle = [conn for conn, _ in book._idle]
    assert len(idle) == size
    assert all(conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE for conn in idle)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- the bookkeeping, without a database ----------------------------------------------------


class Queued(Waiter[str]):
    __slots__ = ("cancelled", "woken")

    def __init__(self) -> None:
        super().__init__()
        self.woken = False
        self.cancelled = False

    def gone(self) -> bool:
        return self.cancelled

    def wake(self) -> None:
        self.woken = True


@pytest.fixture
def full_book() -> PoolBook[str]:
    """A book of two connections, both out."""
    book: PoolBook[str] = PoolBook(2)
    for name in ("a", "b"):
        grant, _ = book.take(0.0)
        assert grant is Slot.FREE
        book.opened(name, 0.0)
    return book


def test_a_connection_given_back_goes_to_the_first_waiter_not_to_a_newcomer(
    full_book: PoolBook[str],
) -> None:
    first, second = Queued(), Queued()
    for waiter in (first, second):
        assert full_book.take(1.0) == (None, [])
        full_book.wait(waiter)
    full_book.give_back("a", healthy=True, now=1.0)
    assert full_book.take(1.0) == (None, [])  # idle, but others wait: in line behind them
    served, stale = full_book.hand_over(1.0)
    assert (served, stale) == ([first], [])
    assert first.given == "a"
    full_book.give_back("b", healthy=False, now=1.0)  # its slot goes to `second`
    assert full_book.hand_over(1.0) == ([second], [])
    assert second.given is Slot.FREE


def test_a_cancelled_waiter_is_skipped_and_withdraws_with_nothing(
    full_book: PoolBook[str],
) -> None:
    gone, waiting = Queued(), Queued()
    full_book.wait(gone)
    full_book.wait(waiting)
    gone.cancelled = True
    full_book.give_back("a", healthy=True, now=1.0)
    assert full_book.hand_over(1.0) == ([waiting], [])
    assert full_book.withdraw(gone) is None
    assert full_book.withdraw(waiting) == "a"


def test_a_waiter_withdrawn_before_its_turn_is_handed_nothing(
    full_book: PoolBook[str],
) -> None:
    left, waiting = Queued(), Queued()
    full_book.wait(left)
    full_book.wait(waiting)
    assert full_book.withdraw(left) is None  # timed out
    full_book.give_back("a", healthy=True, now=1.0)
    assert full_book.hand_over(1.0) == ([waiting], [])
    assert left.given is None


def test_closing_the_book_returns_its_waiters_to_wake(full_book: PoolBook[str]) -> None:
    waiter = Queued()
    full_book.wait(waiter)
    full_book.give_back("a", healthy=True, now=1.0)
    assert full_book.hand_over(1.0) == ([waiter], [])
    later = Queued()
    full_book.wait(later)
    assert full_book.close() == ([], [later])
    assert full_book.give_back("a", healthy=True, now=2.0) is False  # closed: closed by the pool
