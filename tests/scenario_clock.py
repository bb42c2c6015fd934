"""A caller on a host whose clock is off, run under libfaketime by tests/test_clock.py.

    faketime -f -120s python tests/scenario_clock.py '{"dsn": ..., "users": [...], "store": ...}'

Asks for every user's credentials once and prints, per user, the token, the expiry the
Credentials carry and this host's (skewed) idea of now, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from google.oauth2.credentials import Credentials

from gmail_token_store import AsyncTokenStore, TokenStore, TokenStoreError


def report(credentials: Credentials) -> dict[str, Any]:
    assert credentials.expiry is not None
    return {
        "token": credentials.token,
        "expiry": credentials.expiry.isoformat(),
        "local_now": datetime.now(UTC).replace(tzinfo=None).isoformat(),
        "valid": credentials.valid,
    }


def main() -> None:
    order: dict[str, Any] = json.loads(sys.argv[1])
    options: dict[str, Any] = {
        "cache_ttl": 0,
        "http_timeout": 2.0,
        "lock_timeout": 2.0,
        "allow_loopback_token_uri": True,
    }
    results: dict[str, Any] = {}
    if order["store"] == "sync":
        with TokenStore(order["dsn"], **options) as store:
            store.check(order["users"][0])  # a first read teaches the store the offset
            for user in order["users"]:
                try:
                    results[user] = report(store.get_credentials(user))
                except TokenStoreError as exc:
                    results[user] = {"error": type(exc).__name__}
    else:

        async def run() -> None:
            async with AsyncTokenStore(order["dsn"], **options) as store:
                await store.check(order["users"][0])
                for user in order["users"]:
                    try:
                        results[user] = report(await store.get_credentials(user))
                    except TokenStoreError as exc:
                        results[user] = {"error": type(exc).__name__}

        asyncio.run(run())
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
