"""Hostile rows: one poisoned row never stops anyone, and its text never reaches a terminal raw.

PostgreSQL accepts JSON nested thousands deep, multi-megabyte columns, numbers with
thousands of digits and 200,000 scopes; other programs write emails and error texts with
escape sequences. Such a row is `broken` for the library and the command, every other row
is served and listed as usual, and human-readable output escapes control characters.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from gmail_token_store import InvalidTokenRecordError, ReauthRequiredError, TokenStore
from gmail_token_store._core.record import FAILURE_KEY, fingerprint
from gmail_token_store.testing import FakeTokenEndpoint, Reply

from conftest import CLIENT_ID, CLIENT_SECRET, Seeded, SeedRow
from helpers import Cli

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\n"
EVIL_EMAIL = f"evil{ESCAPES}USER_ID  FORGED ROW\u202e@gmail.com"
#: What a terminal must never receive: C0 controls but LF, DEL, C1 controls (as UTF-8).
UNSAFE_BYTES = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]")


def _nested(depth: int) -> str:
    return (
        '{"access_token": "ya29.deep", "refresh_token": "1//deep", "x": '
        + "[" * depth
        + "]" * depth
        + "}"
    )


def _hostile_rows(seed: SeedRow, endpoint: FakeTokenEndpoint) -> dict[str, Seeded]:
    return {
        "nested 3,000 deep": seed(token_data=_nested(3000)),
        "metadata of 2 MB": seed(metadata=Jsonb({"email": "x" * 2_000_000})),
        "200,000 scopes": seed(scopes=Jsonb([f"https://scope/{i}" for i in range(200_000)])),
        "a 5,000-digit number": seed(metadata='{"email": "n@gmail.com", "n": ' + "9" * 5000 + "}"),
        "escape sequences in token_uri": seed(
            oauth_config=Jsonb(
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "token_uri": f"https://evil{ESCAPES}.example.com/token",
                }
            )
        ),
    }


def test_poisoned_rows_are_broken_and_never_raise_anything_else(
    store: TokenStore, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    hostile = _hostile_rows(seed, endpoint)
    healthy = seed(expires_in=3000)
    for name, row in hostile.items():
        for call in (store.get_credentials, store.refresh):
            with pytest.raises(InvalidTokenRecordError) as caught:
                call(row.user_id)
            assert not UNSAFE_BYTES.search(str(caught.value).encode()), name
        status = store.check(row.user_id)
        assert status.state == "broken" and status.problem, name
    statuses = {status.user_id: status for status in store.check_all()}
    assert {statuses[row.user_id].state for row in hostile.values()} == {"broken"}
    assert statuses[healthy.user_id].state == "ok"
    assert store.get_credentials(healthy.user_id).token == healthy.access_token
    assert endpoint.requests == []


def test_untrusted_text_is_escaped_in_errors_and_log_lines(
    store: TokenStore,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    row = seed(expires_in=-10, email=EVIL_EMAIL)
    endpoint.default = Reply.INVALID_GRANT
    with (
        caplog.at_level(logging.INFO, logger="gmail_token_store"),
        pytest.raises(ReauthRequiredError) as caught,
    ):
        store.get_credentials(row.user_id)
    text = str(caught.value) + "\n".join(record.getMessage() for record in caplog.records)
    assert "\\x1b" in text and "\\u202e" in text  # shown, escaped
    assert not UNSAFE_BYTES.search(text.encode())
    assert caught.value.email == EVIL_EMAIL  # the attribute keeps the value as it is


@pytest.fixture
def hostile_table(dsn: str, cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint) -> dict[str, Any]:
    rows = _hostile_rows(seed, endpoint)
    evil = seed(email=EVIL_EMAIL, robeing_id="rb" + ESCAPES[:20], expires_in=3000)
    long_email = seed(email="long-" + "l" * 900 + "@gmail.com", expires_in=3000)
    dead = seed(expires_in=-10, email="dead@gmail.com")
    dead_refresh = "1//dead-" + "d" * 12
    with psycopg.connect(dsn) as conn:  # another program recorded a failure, escapes included
        conn.execute(
            "UPDATE gmail_token SET token_data = token_data || %s, metadata = %s"
            " WHERE user_id = %s",
            (
                Jsonb({"refresh_token": dead_refresh}),
                Jsonb(
                    {
                        "email": "dead@gmail.com",
                        FAILURE_KEY: {
                            "error": "invalid_grant",
                            "description": "revoked" + ESCAPES,
                            "at": "2026-11-27T10:00:00Z",
                            "refresh_token_fingerprint": fingerprint(dead_refresh),
                        },
                    }
                ),
                dead.user_id,
            ),
        )
    for row in [*rows.values(), evil, long_email, dead]:
        cli.secrets |= {row.access_token, row.refresh_token}
    return {"hostile": rows, "evil": evil, "long": long_email, "dead": dead}


def _assert_terminal_safe(output: str) -> None:
    found = UNSAFE_BYTES.search(output.encode())
    assert found is None, f"unsafe bytes {found.group()!r} in output" if found else ""


def test_every_command_reports_poisoned_rows_and_carries_on(
    cli: Cli, hostile_table: dict[str, Any]
) -> None:
    hostile: dict[str, Seeded] = hostile_table["hostile"]
    runs = {
        "list": cli("list"),
        "list --needs-attention": cli("list", "--needs-attention"),
        "refresh-all": cli("refresh-all"),
    }
    for user in [*(row.user_id for row in hostile.values()), hostile_table["evil"].user_id]:
        runs[f"check {user}"] = cli("check", user)
        runs[f"refresh {user}"] = cli("refresh", user)
    for name, result in runs.items():
        _assert_terminal_safe(result.stdout + result.stderr)
        assert "Traceback" not in result.stderr, name
    assert runs["list"].returncode == 0
    assert runs["list --needs-attention"].returncode == 1  # the poisoned rows need a person
    assert runs["refresh-all"].returncode == 1
    table = runs["list"].stdout.splitlines()
    assert max(len(line) for line in table) < 300  # long fields are cut, not padded
    evil_lines = [line for line in table if hostile_table["evil"].user_id in line]
    assert len(evil_lines) == 1 and "\\x1b" in evil_lines[0]  # one row, escaped, no forgery
    assert not any(line.startswith("USER_ID  FORGED") for line in table)
    for row in hostile.values():
        assert any(row.user_id in line and "broken" in line for line in table)
    # The dead row's reason on the line below it, escaped (the description is the fake's).
    dead = next(i for i, line in enumerate(table) if hostile_table["dead"].user_id in line)
    assert "reauth-required" in table[dead]
    assert table[dead + 1].startswith("    reauth-required: ") and "\\x1b" in table[dead + 1]
    assert "refreshed:             0" in runs["refresh-all"].stdout


def test_list_json_stays_exact(cli: Cli, hostile_table: dict[str, Any]) -> None:
    result = cli("list", "--json")
    assert result.returncode == 0
    _assert_terminal_safe(result.stdout)  # JSON escapes control characters itself
    listed = {item["user_id"]: item for item in json.loads(result.stdout)}
    assert listed[hostile_table["evil"].user_id]["email"] == EVIL_EMAIL
    assert listed[hostile_table["evil"].user_id]["robeing_id"] == "rb" + ESCAPES[:20]
    long_email: str = listed[hostile_table["long"].user_id]["email"]
    assert len(long_email) > 900  # not cut
    for row in hostile_table["hostile"].values():
        assert listed[row.user_id]["state"] == "broken"


def test_a_healthy_table_lists_in_the_same_time_with_a_poisoned_row(
    make_store: Callable[..., TokenStore], seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    healthy = [seed(expires_in=3000) for _ in range(5)]
    _hostile_rows(seed, endpoint)
    states = [status.state for status in make_store().check_all()]
    assert states.count("ok") == len(healthy) and states.count("broken") == 5
