"""A preforking server in miniature, run as its own process by tests/test_fork.py.

Like gunicorn --preload or Celery prefork: the parent builds a store and uses it (a
warm-up at import), keeps serving from threads, and forks workers that use the same store
object. Every call's user, token, duration and error go to a JSON-lines file; each child
ends either through sys.exit (atexit handlers run, the store's included) or os._exit.

    python tests/scenario_fork.py '{"dsn": ..., "store": "sync"|"async"|"module", ...}'
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gmail_token_store
from gmail_token_store import AsyncTokenStore, TokenStore, TokenStoreError


class Recorder:
    """Appends one JSON line per call; one file per process, so no interleaving."""

    def __init__(self, directory: Path, role: str) -> None:
        self.path = directory / f"{role}-{os.getpid()}.jsonl"
        self.role = role
        self._lock = threading.Lock()
        self._lines: list[str] = []

    def call(self, user_id: str, fetch: Callable[[], str]) -> None:
        began = time.monotonic()
        try:
            token = fetch()
        except BaseException as exc:
            self.record(user_id, began, None, exc)
        else:
            self.record(user_id, began, token, None)

    def record(
        self, user_id: str, began: float, token: str | None, error: BaseException | None
    ) -> None:
        kind = "" if isinstance(error, TokenStoreError) else "UNEXPECTED "
        line = json.dumps(
            {
                "role": self.role,
                "pid": os.getpid(),
                "user": user_id,
                "token": token,
                "seconds": time.monotonic() - began,
                "error": f"{kind}{type(error).__name__}: {error}" if error else None,
            }
        )
        with self._lock:
            self._lines.append(line)

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        with self.path.open("a") as out:
            out.writelines(line + "\n" for line in lines)


def sync_fetcher(kind: str, dsn: str) -> Callable[[str], str]:
    if kind == "module":
        os.environ["GMAIL_TOKEN_STORE_DSN"] = dsn
        return lambda user: str(gmail_token_store.get_credentials(user).token)
    store = TokenStore(
        dsn,
        allow_loopback_token_uri=True,
        cache_ttl=0,
        max_connections=4,
        http_timeout=2.0,
        lock_timeout=10.0,
    )
    return lambda user: str(store.get_credentials(user).token)


def run_sync(order: dict[str, Any], recorder: Recorder, fetch: Callable[[str], str]) -> None:
    users: list[str] = order["users"] + order["due_users"]

    def worker(offset: int) -> None:
        for i in range(order["calls"]):
            user = users[(offset + i) % len(users)]
            recorder.call(user, functools.partial(fetch, user))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(order["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    recorder.flush()


async def call(recorder: Recorder, store: AsyncTokenStore, user: str) -> None:
    began = time.monotonic()
    try:
        token = (await store.get_credentials(user)).token
    except Exception as exc:
        recorder.record(user, began, None, exc)
    else:
        recorder.record(user, began, token, None)


def run_async(order: dict[str, Any], recorder: Recorder, store: AsyncTokenStore) -> None:
    users: list[str] = order["users"] + order["due_users"]

    async def worker(offset: int) -> None:
        for i in range(order["calls"]):
            await call(recorder, store, users[(offset + i) % len(users)])

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in range(order["threads"])))

    asyncio.run(main())
    recorder.flush()


def main() -> None:
    order: dict[str, Any] = json.loads(sys.argv[1])
    out = Path(order["out"])
    kind = order["store"]
    parent = Recorder(out, "parent")

    async_store: AsyncTokenStore | None = None
    if kind == "async":
        async_store = AsyncTokenStore(
            order["dsn"],
            cache_ttl=0,
            http_timeout=2.0,
            lock_timeout=10.0,
            allow_loopback_token_uri=True,
        )

        async def warm() -> None:
            assert async_store is not None
            for user in order["users"] + order["warm_due_users"]:
                await async_store.get_credentials(user)

        asyncio.run(warm())  # the warm-up at import: connections and HTTP client in use
    else:
        fetch = sync_fetcher(kind, order["dsn"])
        for user in order["users"] + order["warm_due_users"]:
            fetch(user)

    # The parent keeps serving while the children run, and after they exit.
    stop = threading.Event()

    def serve_in_parent() -> None:
        if async_store is not None:
            store = async_store

            async def loop() -> None:
                while not stop.is_set():
                    for user in order["users"]:
                        await call(parent, store, user)

            asyncio.run(loop())
        else:
            while not stop.is_set():
                for user in order["users"]:
                    parent.call(user, functools.partial(fetch, user))

    server = threading.Thread(target=serve_in_parent)
    server.start()

    children = []
    for index in range(order["children"]):
        pid = os.fork()
        if pid == 0:  # a worker
            child = Recorder(out, "child")
            if async_store is not None:
                run_async(order, child, async_store)
            else:
                run_sync(order, child, fetch)
            if index % 2 == 0:
                sys.exit(0)  # atexit handlers run: the module-level store's close() included
            os._exit(0)
        children.append(pid)

    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    time.sleep(order["after"])  # the parent keeps serving after its children are gone
    stop.set()
    server.join(timeout=60)
    parent.flush()
    sys.stdout.write(json.dumps({"children": [os.waitstatus_to_exitcode(s) for s in statuses]}))
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
