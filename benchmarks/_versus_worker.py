"""One side of benchmarks/versus_0_2.py: a store of whichever gmail_token_store version runs
this script, timing the scenarios it is asked for (public API only, so 0.2.0 runs it too).

Reads JSON commands on stdin, one per line: {"scenario": ..., "calls": N}; answers with
{"seconds": ...} per command (seconds per call).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from gmail_token_store import StoreOptions, TokenStore

#: This version refuses loopback token URIs (the fake endpoint) unless told; 0.2.0 allowed
#: them and knows no such option.
OPTIONS: StoreOptions = (
    {"allow_loopback_token_uri": True}
    if "allow_loopback_token_uri" in StoreOptions.__annotations__
    else {}
)


def main() -> None:
    dsn, users_file = sys.argv[1], sys.argv[2]
    with open(users_file) as file:
        users: dict[str, list[str]] = json.load(file)
    fresh, due = users["fresh"], users["due"]
    uncached_options: StoreOptions = {**OPTIONS, "cache_ttl": 0}
    uncached = TokenStore(dsn, **uncached_options)
    cached = TokenStore(dsn, **OPTIONS)
    position = {"due": 0}

    def miss() -> None:
        uncached.get_credentials(fresh[0])

    def hit() -> None:
        cached.get_credentials(fresh[0])

    def refresh() -> None:  # the locked refresh with a token request, row after row
        user = due[position["due"] % len(due)]
        position["due"] += 1
        uncached.refresh(user, force=True)

    def check_all() -> None:
        uncached.check_all()

    scenarios: dict[str, Callable[[], None]] = {
        "miss": miss,
        "hit": hit,
        "refresh": refresh,
        "check_all": check_all,
    }
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        call = scenarios[command["scenario"]]
        calls = int(command["calls"])
        began = time.perf_counter()
        for _ in range(calls):
            call()
        print(json.dumps({"seconds": (time.perf_counter() - began) / calls}), flush=True)
    uncached.close()
    cached.close()


if __name__ == "__main__":
    main()
