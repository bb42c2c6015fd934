"""Fork safety: a store used before os.fork() keeps working in the parent and every child.

tests/scenario_fork.py plays the preforking server (gunicorn --preload, Celery prefork):
a warmed store, a parent that keeps serving from a thread, four children of four threads
each with cache_ttl=0 on distinct users plus due users they must refresh; half of the
children exit through atexit handlers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gmail_token_store.testing import FakeTokenEndpoint

from conftest import Seeded, SeedRow
from helpers import run_scenario

SCENARIO = Path(__file__).parent / "scenario_fork.py"
#: Every call must end well within this (seconds): no hang on an inherited socket.
CALL_BOUND = 10.0


@pytest.mark.parametrize("kind", ["sync", "module", "async"])
def test_store_used_before_fork_serves_every_process_its_own_users_tokens(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, tmp_path: Path, kind: str
) -> None:
    users = [seed(expires_in=3600) for _ in range(12)]
    warm_due = [seed(expires_in=-10) for _ in range(2)]  # refreshed by the parent first
    due = [seed(expires_in=-10) for _ in range(4)]  # refreshed in the children
    order = {
        "dsn": dsn,
        "store": kind,
        "users": [row.user_id for row in users],
        "warm_due_users": [row.user_id for row in warm_due],
        "due_users": [row.user_id for row in due],
        "children": 4,
        "threads": 4,
        "calls": 60,
        "after": 1.0,
        "out": str(tmp_path),
    }
    outcome = run_scenario(sys.executable, str(SCENARIO), json.dumps(order), timeout=300)
    assert outcome == {"children": [0, 0, 0, 0]}

    calls = [
        json.loads(line)
        for path in tmp_path.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    by_role = {role: [c for c in calls if c["role"] == role] for role in ("parent", "child")}
    assert len(by_role["child"]) == 4 * 4 * 60
    assert len(by_role["parent"]) > 0  # it served during and after the children's lives
    assert [c["error"] for c in calls if c["error"]] == []
    assert max(c["seconds"] for c in calls) < CALL_BOUND

    owner = _token_owners([*users, *warm_due, *due], endpoint)
    wrong = [c for c in calls if owner.get(c["token"]) != c["user"]]
    assert wrong == [], f"{len(wrong)} calls got a token that is not their user's"
    # Each due user was refreshed exactly once, whoever did it; the warmed ones by the parent.
    refreshed = [
        owner[r.issued_access_token] for r in endpoint.refresh_requests() if r.issued_access_token
    ]
    assert sorted(refreshed) == sorted(row.user_id for row in [*warm_due, *due])


def _token_owners(rows: list[Seeded], endpoint: FakeTokenEndpoint) -> dict[str | None, str]:
    """Every token a user may legitimately get: the seeded one and those issued for it."""
    owner: dict[str | None, str] = {row.access_token: row.user_id for row in rows}
    by_refresh = {row.refresh_token: row.user_id for row in rows}
    for request in endpoint.refresh_requests():
        if request.issued_access_token and request.refresh_token in by_refresh:
            owner[request.issued_access_token] = by_refresh[request.refresh_token]
    return owner
