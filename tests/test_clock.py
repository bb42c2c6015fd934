"""One clock: freshness is judged, and expiry written, by the database's clock.

Callers run as separate processes under libfaketime (Debian `faketime`) with their clock
120 s behind or ahead of the database's; the rows are seeded by the database's clock.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gmail_token_store.testing import FakeTokenEndpoint

from conftest import SeedRow
from helpers import run_scenario

SCENARIO = Path(__file__).parent / "scenario_clock.py"
#: Seeded lifetimes by the database's clock: expired, mandatory window, advisory window, fresh.
LIFETIMES = (-30, 30, 90, 200, 3600)


def _db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now() AT TIME ZONE 'UTC'").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("skew", ["-120s", "+120s"], ids=["host 120 s behind", "host 120 s ahead"])
def test_no_caller_gets_a_token_expired_by_the_databases_clock(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, skew: str, kind: str
) -> None:
    assert shutil.which("faketime"), "needs Debian's faketime (make test installs it)"
    rows = {lifetime: seed(expires_in=lifetime) for lifetime in LIFETIMES}
    # Expired by the database's clock, but 90 s left by a clock 120 s behind, and its row
    # locked by a refresher elsewhere: serving "the still-valid token" would be wrong.
    locked = seed(expires_in=-30)
    users = [row.user_id for row in rows.values()] + [locked.user_id]
    order = {"dsn": dsn, "store": kind, "users": users}
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM gmail_token WHERE user_id = %s FOR UPDATE", (locked.user_id,))
        got: dict[str, Any] = run_scenario(
            "faketime", "-f", skew, sys.executable, str(SCENARIO), json.dumps(order), timeout=120
        )
    db_now = _db_now(dsn)
    issued = {r.issued_access_token for r in endpoint.refresh_requests()}
    assert got.pop(locked.user_id) == {"error": "RefreshFailedError"}  # never the expired token

    with psycopg.connect(dsn) as conn:
        stored: dict[str, datetime] = dict(
            conn.execute("SELECT user_id::text, expiry FROM gmail_token").fetchall()
        )
    for lifetime, row in rows.items():
        answer = got[row.user_id]
        # The token handed out is valid by the database's clock: the row's expiry (the
        # one refreshed, or the seeded one) lies ahead of the database's now.
        assert answer["token"] in issued | {row.access_token}
        assert stored[row.user_id] > db_now, (lifetime, skew)
        if lifetime < 300:  # inside the refresh margin by the database's clock: refreshed
            assert answer["token"] in issued, (lifetime, skew)
            # written as the database's now + expires_in, whatever the host's clock says
            written = stored[row.user_id] - db_now
            assert timedelta(seconds=3590) < written < timedelta(seconds=3605), (lifetime, written)
        else:
            assert answer["token"] == row.access_token
        # The Credentials' expiry is on the host's clock, so google-auth's own checks (and
        # googleapiclient's) agree with the store: as much time left by either clock.
        local_left = datetime.fromisoformat(answer["expiry"]) - datetime.fromisoformat(
            answer["local_now"]
        )
        assert abs(local_left - (stored[row.user_id] - db_now)) < timedelta(seconds=5)
        assert answer["valid"] is True
