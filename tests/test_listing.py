"""Table-wide reads in flat memory: the streamed listings equal the whole ones, the sieve
never hides a row the core would flag, memory does not grow with the table, and keepalive
runs at once share the due rows.

Real PostgreSQL, the command as a subprocess (its own peak RSS measured by `os.wait4`),
the fake token endpoint over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from gmail_token_store import TokenStore, TokenStoreError
from gmail_token_store._cli.listing import indented
from gmail_token_store._core.keepalive import is_due
from gmail_token_store._core.listing import IDLE_SECONDS, Sieve
from gmail_token_store._core.record import (
    CANONICAL,
    FAILURE_KEY,
    TokenRecord,
    fingerprint,
    listed_record,
    parse_row,
)
from gmail_token_store._io import sql
from gmail_token_store._io.sql import COLUMNS, PAGE_ROWS, SIEVED_PAGE
from gmail_token_store._keepalive import sieve_bounds
from gmail_token_store.metrics import exposition
from gmail_token_store.testing import FakeTokenEndpoint

from conftest import CLIENT_ID, CLIENT_SECRET, SeedRow, utcnow
from helpers import SCRIPT, Cli

# --- the JSON writer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        [{}],
        {"a": []},
        {"e\u00e9\u202e\x1b": '\ud83d\ude00 \x00 \u2028 "q" \\ /', "n": None, "t": True},
        {"f": [1.5, -0.0, 1e300, 2**70, -3], "nested": {"x": [[], {}, [1, [2, {"y": "z"}]]]}},
        [{"status": "found", "scopes": ["a", "b"], "last_error": {"error": "invalid_grant"}}] * 3,
    ],
)
def test_the_streamed_json_is_json_dumps_indent_2_byte_for_byte(value: Any) -> None:
    assert indented(value) == json.dumps(value, indent=2)


# --- a table of every kind of row ----------------------------------------------------------


def set_row(dsn: str, user_id: str, sql: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE gmail_token SET {sql} WHERE user_id = %s", (*params, user_id))


def varied_table(dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint) -> dict[str, str]:
    """Rows of every state and of every way the sieve's predicate can fail; by name."""
    client = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    uri = endpoint.token_uri
    rows: dict[str, str] = {}

    def add(name: str, **columns: Any) -> str:
        rows[name] = seed(**columns).user_id
        return rows[name]

    for n in range(20):
        add(f"healthy {n}", expires_in=3600 + n)
    add("due", expires_in=100)
    add("expired", expires_in=-100)
    add("at the margin", expires_in=300.2)
    add("just past the margin", expires_in=301.5)
    add("no expiry", expires_in=None)
    add("idle", updated_at=utcnow() - timedelta(days=151))
    add("nearly idle", updated_at=utcnow() - timedelta(days=149, hours=23, minutes=59))
    add("long idle for the keepalive", updated_at=utcnow() - timedelta(days=40))
    add("no refresh token", token_data=Jsonb({"access_token": "ya29.only"}))
    add("empty refresh token", token_data=Jsonb({"access_token": "ya29.x", "refresh_token": ""}))
    add("numeric token", token_data=Jsonb({"access_token": 5, "refresh_token": "1//x"}))
    add("token_data as JSON text", token_data=Jsonb('{"access_token": "a", "refresh_token": "r"}'))
    add("legacy token key", token_data=Jsonb({"token": "ya29.legacy", "refresh_token": "1//l"}))
    add("no oauth_config", oauth_config=None)
    add(
        "empty client secret", oauth_config=Jsonb({**client, "client_secret": "", "token_uri": uri})
    )
    add("refused token_uri", oauth_config=Jsonb({**client, "token_uri": "https://evil.example/t"}))
    add("token_uri only in token_data", oauth_config=Jsonb(client))
    set_row(
        dsn,
        rows["token_uri only in token_data"],
        "token_data = token_data || %s",
        Jsonb({"token_uri": uri}),
    )
    add("numeric token_uri", oauth_config=Jsonb({**client, "token_uri": 7}))
    add("scopes as text", scopes=Jsonb("https://www.googleapis.com/auth/gmail.send"))
    add("scopes NULL", scopes=None)
    add("a scope that is a number", scopes=Jsonb(["https://www.googleapis.com/auth/gmail.send", 5]))
    add("300 scopes", scopes=Jsonb([f"https://scope/{n}" for n in range(300)]))
    dead = add("dead")
    with psycopg.connect(dsn, autocommit=True) as conn:
        refresh = conn.execute(
            "SELECT token_data->>'refresh_token' FROM gmail_token WHERE user_id = %s", (dead,)
        ).fetchone()
    failure = {"error": "invalid_grant", "description": "gone", "at": "2026-01-01T00:00:00Z"}
    assert refresh is not None
    set_row(
        dsn,
        dead,
        "metadata = metadata || %s",
        Jsonb({FAILURE_KEY: {**failure, "refresh_token_fingerprint": fingerprint(refresh[0])}}),
    )
    stale = add("stale failure")
    set_row(
        dsn,
        stale,
        "metadata = metadata || %s",
        Jsonb({FAILURE_KEY: {**failure, "refresh_token_fingerprint": "sha256:0000"}}),
    )
    add("metadata as an array", metadata=Jsonb([1, 2]))
    add(
        "big compressible token_data",
        token_data=Jsonb({"access_token": "a", "refresh_token": "r", "pad": "x" * 200_000}),
    )
    add(
        "deep token_data",
        token_data='{"access_token": "a", "refresh_token": "r", "x": '
        + "[" * 100
        + "]" * 100
        + "}",
    )
    add(
        "sealed-looking",
        token_data=Jsonb({"access_token": "a", "refresh_token": "r", "sealed": {"kid": "k"}}),
    )
    inf = add("expiry infinity")
    set_row(dsn, inf, "expiry = 'infinity'")
    far = add("expiry in year 20000")
    set_row(dsn, far, "expiry = '20000-01-01'")
    upd = add("updated_at infinity")
    set_row(dsn, upd, "updated_at = 'infinity'")
    add("no updated_at", updated_at=None)
    return rows


def dull_rows(dsn: str, sieve: Sieve) -> set[str]:
    """The rows the sieve lets go (only counted), by running its statement page by page."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM gmail_token ORDER BY id")]
        sent = set()
        after = 0
        while True:
            rows = conn.execute(SIEVED_PAGE.text, sieve.params(after, 7)).fetchall()
            sent |= {row[0] for row in rows[:-1]}
            if rows[-1][23] is None:
                break
            after = rows[-1][23]
        users: dict[int, str] = dict(
            conn.execute("SELECT id, user_id::text FROM gmail_token").fetchall()
        )
    return {users[row_id] for row_id in ids if row_id not in sent}


@pytest.mark.parametrize(
    ("within", "idle_days"),
    [(None, None), (3000.0, 30.0), (0.0, 1.0)],  # the listings', and two keepalives'
)
def test_the_sieve_lets_go_only_rows_the_core_finds_ok_and_not_due(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    within: float | None,
    idle_days: float | None,
) -> None:
    rows = varied_table(dsn, seed, endpoint)
    bounds = (
        {"margin": 300.0, "idle": IDLE_SECONDS}
        if within is None or idle_days is None
        else sieve_bounds(300.0, within, idle_days)
    )
    with TokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        dull = dull_rows(dsn, Sieve(token_uris=(endpoint.token_uri,), **bounds))
        statuses = {status.user_id: status for status in store.check_all()}
    names = {user_id: name for name, user_id in rows.items()}
    assert len(dull) >= 15  # the healthy rows (else this proves nothing)
    for user_id in dull:
        status = statuses[user_id]
        assert status.state == "ok", names[user_id]
        if within is not None and idle_days is not None:
            assert not is_due(status, within=within, idle_days=idle_days), names[user_id]
    # And every kind of odd row was sent to the core.
    odd = {
        name
        for name in rows
        if not name.startswith(
            (
                "healthy",
                "just past",
                "nearly idle",
                "stale",
                "no updated_at",
                "long idle",
                "token_uri only",
            )
        )
    }
    assert [name for name in odd if rows[name] in dull] == []


def test_the_sieved_summary_and_rows_are_the_whole_listings(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, make_store: Callable[..., TokenStore]
) -> None:
    varied_table(dsn, seed, endpoint)
    store = make_store()
    everything = store.check_all()
    whole = exposition(everything)
    stream = store.iter_statuses(needs_attention=True, page_size=7)
    attention = list(stream)
    assert stream.complete
    assert {s.user_id for s in attention} == {s.user_id for s in everything if s.needs_attention}
    assert same_but_time(exposition(stream.summary), whole)
    walked = store.iter_statuses(page_size=5)
    listed = list(walked)
    assert [s.user_id for s in listed] == [s.user_id for s in everything]  # oldest row first
    assert walked.summary.states == stream.summary.states
    assert walked.summary.total == len(everything) == stream.summary.total


def same_but_time(one: str, other: str) -> bool:
    """Two expositions alike, the seconds gauges allowed to differ by a little."""

    def gauges(text: str) -> dict[str, float]:
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if not line.startswith("#")
        }

    a, b = gauges(one), gauges(other)
    return a.keys() == b.keys() and all(
        a[key] == b[key] or (key.endswith("_seconds") and abs(a[key] - b[key]) <= 3) for key in a
    )


def test_list_json_streamed_is_the_whole_listing(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, cli: Cli
) -> None:
    varied_table(dsn, seed, endpoint)
    with TokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        before = [status.to_dict() for status in store.check_all()]
        result = cli("list", "--json")
        after = [status.to_dict() for status in store.check_all()]
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert len(listed) == len(before) == len(after)
    # Each row as the library saw it just before or just after (a row near a window's edge
    # may cross it while the command starts), the seconds allowed to differ by a little.
    for got, *wanted in zip(listed, before, after, strict=True):
        assert any(_alike(got, want) for want in wanted), (got, wanted)
    # The bytes are json.dumps(indent=2)'s for what was listed.
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2) + "\n"


def _alike(got: dict[str, Any], want: dict[str, Any]) -> bool:
    seconds = ("remaining_seconds", "seconds_since_refresh")
    for key in seconds:
        if (got[key] is None) != (want[key] is None):
            return False
        if got[key] is not None and abs(got[key] - want[key]) > 3:
            return False
    return {k: v for k, v in got.items() if k not in seconds} == {
        k: v for k, v in want.items() if k not in seconds
    }


def test_list_into_a_closed_pipe_ends_quietly(dsn: str, cli: Cli) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, 5000)
    assert SCRIPT is not None
    for args in (["list"], ["list", "--json"]):
        pipeline = subprocess.run(  # noqa: S602 - the pipe is the point
            f"{SCRIPT} {' '.join(args)} | head -3",
            shell=True,
            capture_output=True,
            text=True,
            env=cli.env(),
            timeout=120,
            check=False,
        )
        assert len(pipeline.stdout.splitlines()) == 3
        assert pipeline.stderr == "", pipeline.stderr  # no BrokenPipeError traceback


# --- memory -------------------------------------------------------------------------------


def build(conn: psycopg.Connection[Any], rows: int) -> None:
    """`rows` healthy rows (every 20th due, every 50th dead), built in the server."""
    conn.execute(
        """
        INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, scopes,
                                 metadata, expiry)
        SELECT gen_random_uuid(), 'robeing-' || g %% 50,
               jsonb_build_object('access_token', 'ya29.' || md5(g::text) || md5(g || 'a')
                   || md5(g || 'b'), 'refresh_token', '1//' || md5(g || 'r'),
                   'token_type', 'Bearer'),
               jsonb_build_object('client_id', 'c.apps.googleusercontent.com',
                   'client_secret', 'secret', 'token_uri', 'https://oauth2.googleapis.com/token'),
               '["https://www.googleapis.com/auth/gmail.send"]'::jsonb,
               jsonb_build_object('email', 'user' || g || '@gmail.com')
                 || CASE WHEN g %% 50 = 0 THEN '{"refresh_failure": {"error": "invalid_grant",
                    "refresh_token_fingerprint": "sha256:0"}}'::jsonb ELSE '{}'::jsonb END,
               (now() AT TIME ZONE 'UTC') + CASE WHEN g %% 20 = 0 THEN interval '100 seconds'
                                                 ELSE interval '2 hours' END
        FROM generate_series(1, %(rows)s) AS g
        """,
        {"rows": rows},
    )
    conn.execute("VACUUM ANALYZE gmail_token")


_LAUNCHER = """\
import os, sys
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(cli: Cli, *args: str) -> float:
    """The command's own peak RSS (a bare launcher forks it: Linux keeps a process's peak
    across exec, so it must not be forked from this big interpreter)."""
    assert SCRIPT is not None
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, SCRIPT, *args],
        capture_output=True,
        text=True,
        env=cli.env(),
        timeout=600,
        check=True,
    )
    peak, code = result.stdout.split()
    assert int(code) in (0, 1), result.stderr
    return int(peak) / 1024


def test_listing_memory_does_not_grow_with_the_table(dsn: str, cli: Cli) -> None:
    commands = (["list", "--json"], ["list"], ["list", "--needs-attention"], ["metrics"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, 20_000)
    small = {tuple(args): peak_rss_mb(cli, *args) for args in commands}
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, 180_000)  # 200,000 rows now
    for args in commands:
        big = peak_rss_mb(cli, *args)
        assert big < 100, (args, big)
        assert big - small[tuple(args)] < 8, (args, small[tuple(args)], big)  # not 10x


# --- keepalive runs at once ----------------------------------------------------------------


def test_two_refresh_all_runs_at_once_share_the_due_rows_and_refresh_each_once(
    seed: SeedRow, endpoint: FakeTokenEndpoint, cli: Cli
) -> None:
    endpoint.latency = 0.05
    due = [seed(expires_in=60).user_id for _ in range(80)]
    for _ in range(40):
        seed(expires_in=7200)
    assert SCRIPT is not None
    runs = [
        subprocess.Popen(
            [SCRIPT, "refresh-all", "--concurrency", "4"],
            env=cli.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    sent = [request.refresh_token for request in endpoint.refresh_requests()]
    assert len(sent) == len(due) == len(set(sent))  # each due row refreshed once
    refreshed = [int(out.split("refreshed:")[1].split()[0]) for out, _ in outputs]
    assert sum(refreshed) == len(due)
    assert min(refreshed) > 0  # both worked: they shared the rows


def test_a_refresh_all_that_dies_mid_way_leaves_nothing_locked_and_the_next_run_finishes(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint, cli: Cli
) -> None:
    endpoint.latency = 0.5
    due = [seed(expires_in=60).user_id for _ in range(30)]
    assert SCRIPT is not None
    run = subprocess.Popen(
        [SCRIPT, "refresh-all", "--concurrency", "2"],
        env=cli.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(endpoint.refresh_requests()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(10)
    endpoint.latency = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'gmail_token' AND l.pid <> pg_backend_pid()"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "a dead run's lock outlived it"
            time.sleep(0.1)
    finished = cli("refresh-all")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    with TokenStore(dsn, allow_loopback_token_uri=True, cache_ttl=0) as store:
        assert all(store.check(user_id).state == "ok" for user_id in due)


def test_refresh_all_within_0_refreshes_every_expired_row(
    seed: SeedRow, endpoint: FakeTokenEndpoint, cli: Cli
) -> None:
    expired = {seed(expires_in=-10 - n).user_id for n in range(5)}
    for _ in range(5):
        seed(expires_in=120)  # due by the margin, not within 0
    result = cli("refresh-all", "--within", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refreshed:             5" in result.stdout
    assert len(endpoint.refresh_requests()) == len(expired)


def test_iter_statuses_refuses_a_bad_page_size(make_store: Callable[..., TokenStore]) -> None:
    with pytest.raises(ValueError, match="page_size"):
        make_store().iter_statuses(page_size=0)


def test_a_canonical_row_listed_without_decoding_is_the_record_the_parse_makes(
    dsn: str, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    rows = varied_table(dsn, seed, endpoint)
    seed(
        metadata=Jsonb(
            {
                "email": "\u00e9l\u00e8ve\u202e@gmail.com",
                "google_account_id": "1234",
                "account_verified": True,
                "consented_at": "2026-11-30T10:00:00+00:00",
            }
        )
    )
    seed(metadata=None, robeing_id=None, updated_at=None, scopes=Jsonb([]))
    seed(scopes=Jsonb(["https://www.googleapis.com/auth/gmail.send", "openid", "email"]))
    with psycopg.connect(dsn, autocommit=True) as conn:
        listed = conn.execute(PAGE_ROWS.text, {"after": 0, "limit": 10_000}).fetchall()
        whole = {
            row[0]: row
            for row in conn.execute(
                f"SELECT {COLUMNS}, extract(epoch from statement_timestamp())::float8,"
                " extract(epoch from LOCALTIMESTAMP)::float8 FROM gmail_token"
            )
        }
    canonical = [row for row in listed if row[CANONICAL]]
    assert len(canonical) >= 25 and len(canonical) < len(listed)
    assert rows["dead"] in {row[1] for row in canonical}  # failures too: decoded from metadata
    for row in canonical:
        fast, parsed = listed_record(row), parse_row(whole[row[0]])
        for name in TokenRecord.__slots__:
            if name in ("token_data", "oauth_config", "rewritable", "sealed_ids"):
                continue  # (what a write back needs: a listed record is never written)
            assert getattr(fast, name) == getattr(parsed, name), (name, row[1])


def test_before_postgresql_14_the_listings_prove_no_row_and_list_the_same(
    dsn: str,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    make_store: Callable[..., TokenStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pg_column_compression()` came with PostgreSQL 14. Here a schema first on the
    store's search path hides it behind a function that fails, as a server without it
    would: the listings fail on 14's statements and, for a server older than 14, use the
    texts that prove no row (every row goes to the core) and list exactly the same."""
    varied_table(dsn, seed, endpoint)
    whole = make_store().check_all()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS before_14 CASCADE")
        conn.execute("CREATE SCHEMA before_14")
        conn.execute(
            "CREATE FUNCTION before_14.pg_column_compression(jsonb) RETURNS text"
            " LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'not before PostgreSQL 14'; END$$"
        )
    hiding = make_conninfo(dsn, options="-c search_path=before_14,public,pg_catalog")
    try:
        with pytest.raises(TokenStoreError, match="P0001"):  # our function's exception
            make_store(conninfo=hiding).check_all()
        monkeypatch.setattr(sql, "COMPRESSION_INFO_SINCE", 10**9)  # every server is older
        store = make_store(conninfo=hiding)
        assert [s.user_id for s in store.check_all()] == [s.user_id for s in whole]
        stream = store.iter_statuses(needs_attention=True, page_size=7)
        attention = list(stream)
        assert {s.user_id for s in attention} == {s.user_id for s in whole if s.needs_attention}
        assert same_but_time(exposition(stream.summary), exposition(whole))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA before_14 CASCADE")
    assert SIEVED_PAGE.before_14 is not None and PAGE_ROWS.before_14 is not None
    for text in (SIEVED_PAGE.before_14, PAGE_ROWS.before_14):
        assert "pg_column_compression" not in text
