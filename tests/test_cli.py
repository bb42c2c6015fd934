"""The gmail-token-store command, run as the installed console script in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from google.oauth2.credentials import Credentials
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND
from gmail_token_store.testing import FakeTokenEndpoint, Reply

from conftest import CLIENT_ID, CLIENT_SECRET, GMAIL_READONLY, SeedRow, utcnow
from helpers import DSN_PASSWORD, SCRIPT, Cli, authorize, one_line

SEED_COLUMNS = [
    ("id", "integer", "NO", "nextval('gmail_token_id_seq'::regclass)"),
    ("user_id", "uuid", "NO", None),
    ("robeing_id", "character varying", "YES", None),
    ("token_data", "jsonb", "NO", None),
    ("oauth_config", "jsonb", "YES", None),
    ("scopes", "jsonb", "YES", None),
    ("metadata", "jsonb", "YES", None),
    ("expiry", "timestamp without time zone", "YES", None),
    ("is_equipped", "boolean", "YES", "false"),
    ("equipped_to", "character varying", "YES", None),
    ("created_at", "timestamp without time zone", "YES", "CURRENT_TIMESTAMP"),
    ("updated_at", "timestamp without time zone", "YES", "CURRENT_TIMESTAMP"),
]


def seeded(cli: Cli, seed: SeedRow, **columns: Any) -> str:
    row = seed(**columns)
    cli.secrets |= {row.access_token, row.refresh_token}
    return row.user_id


# --- init-db -------------------------------------------------------------------------------


def test_init_db_creates_the_seed_table_once_and_never_alters_it(dsn: str, cli: Cli) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE gmail_token")
    first, second = cli("init-db"), cli("init-db")
    assert (first.returncode, second.returncode) == (0, 0)
    assert "created" in first.stdout and "left unchanged" in second.stdout
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_name = 'gmail_token'"
            " ORDER BY ordinal_position"
        ).fetchall()
        unique = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'gmail_token' ORDER BY indexname"
        ).fetchall()
    assert columns == SEED_COLUMNS
    assert any("UNIQUE" in index and "(user_id)" in index for (index,) in unique)

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE gmail_token ADD COLUMN added_by_someone_else text")
    assert cli("init-db").returncode == 0
    with psycopg.connect(dsn) as conn:
        names = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            ("gmail_token",),
        ).fetchall()
    assert ("added_by_someone_else",) in names


# --- import --------------------------------------------------------------------------------


@pytest.mark.parametrize("trailing_z", [True, False], ids=["expiry with Z", "expiry without Z"])
def test_import_stores_a_token_json_in_the_seed_layout(
    dsn: str, cli: Cli, endpoint: FakeTokenEndpoint, tmp_path: Path, trailing_z: bool
) -> None:
    expiry = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    credentials = Credentials(
        "ya29.imported-" + "i" * 20,
        refresh_token="1//imported-refresh-" + "r" * 12,
        token_uri=endpoint.token_uri,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scopes=[GMAIL_SEND, GMAIL_READONLY],
        expiry=expiry,
    )
    document = json.loads(credentials.to_json())  # what InstalledAppFlow scripts wrote
    assert document["expiry"].endswith("Z")
    if not trailing_z:
        document["expiry"] = document["expiry"].removesuffix("Z")
    path = tmp_path / "token_user42.json"
    path.write_text(json.dumps(document))
    cli.secrets |= {document["token"], document["refresh_token"]}
    user_id = str(uuid.uuid4())

    result = cli(
        "import",
        str(path),
        "--user-id",
        user_id,
        "--email",
        "imp@gmail.com",
        "--robeing-id",
        "rb-9",
    )

    assert result.returncode == 0, result.stderr
    assert user_id in result.stdout and "imp@gmail.com" in result.stdout
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT token_data, oauth_config, scopes, expiry, metadata, robeing_id FROM gmail_token"
            " WHERE user_id = %s",
            (user_id,),
        ).fetchone()
    assert row is not None
    token_data, oauth_config, scopes, stored_expiry, metadata, robeing_id = row
    assert token_data == {
        "access_token": credentials.token,
        "refresh_token": credentials.refresh_token,
        "token_type": "Bearer",
    }
    assert oauth_config == {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "token_uri": endpoint.token_uri,
    }
    assert scopes == [GMAIL_SEND, GMAIL_READONLY]
    assert stored_expiry == expiry
    assert metadata == {"email": "imp@gmail.com", "source_file": "token_user42.json"}
    assert robeing_id == "rb-9"


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"token": "ya29.x", "client_id": CLIENT_ID}),  # no refresh token
        json.dumps({"refresh_token": 42}),
        json.dumps({"refresh_token": "1//r", "expiry": "next tuesday"}),
        json.dumps({"refresh_token": "1//r", "scopes": {"a": 1}}),
        json.dumps({"refresh_token": "1//r", "token_uri": "https://evil.example.com/token"}),
        json.dumps({"type": "service_account", "refresh_token": "1//r"}),
    ],
    ids=[
        "not JSON",
        "array",
        "no refresh token",
        "refresh token not a string",
        "bad expiry",
        "bad scopes",
        "foreign token_uri",
        "service account",
    ],
)
def test_import_of_a_malformed_file_prints_one_line_and_writes_nothing(
    dsn: str, cli: Cli, tmp_path: Path, content: str
) -> None:
    path = tmp_path / "token.json"
    path.write_text(content)
    result = cli("import", str(path), "--user-id", str(uuid.uuid4()))
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("gmail-token-store: error:")
    assert "Traceback" not in result.stderr and result.stdout == ""
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM gmail_token").fetchone() == (0,)


# --- check / refresh -----------------------------------------------------------------------


def test_check_prints_auth_server_json_and_exits_by_found(cli: Cli, seed: SeedRow) -> None:
    user_id = seeded(cli, seed, expires_in=120)
    found = cli("check", user_id)
    assert found.returncode == 0
    report = json.loads(found.stdout)
    assert report["status"] == "found" and report["needs_refresh"] is True
    assert report["email"] == "test@gmail.com" and report["has_refresh_token"] is True

    missing = cli("check", str(uuid.uuid4()))
    assert missing.returncode == 1 and json.loads(missing.stdout)["status"] == "not_found"


def test_refresh_prints_json_and_a_revoked_grant_fails_in_one_line(
    cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    due = seeded(cli, seed, expires_in=60)
    result = cli("refresh", due)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["status"] == "refreshed" and 3500 < answer["expires_in"] <= 3599
    assert "access_token" not in answer  # the command never prints a token
    assert json.loads(cli("refresh", due).stdout)["status"] == "valid"
    assert json.loads(cli("refresh", due, "--force").stdout)["status"] == "refreshed"

    row = seed(expires_in=0)
    cli.secrets |= {row.access_token, row.refresh_token}
    endpoint.revoke(row.refresh_token)
    failed = cli("refresh", row.user_id)
    assert failed.returncode == 1 and failed.stdout == ""
    line = one_line(failed.stderr)
    assert row.user_id in line and "test@gmail.com" in line and "re-authorize" in line


@pytest.mark.parametrize(
    "args",
    [
        ["check", "not-a-uuid"],
        ["refresh"],
        [],
        ["list", "--bogus"],
        ["refresh-all", "--concurrency", "0"],
    ],
    ids=["malformed id", "missing id", "no command", "unknown flag", "zero concurrency"],
)
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    assert cli(*args).returncode == 2


@pytest.mark.parametrize(
    "command",
    [[], ["init-db"], ["import"], ["authorize"], ["check"], ["refresh"], ["list"], ["refresh-all"]],
)
def test_every_command_has_help(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0 and "usage: gmail-token-store" in result.stdout


def test_module_entry_point_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gmail_token_store", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "refresh-all" in result.stdout


def test_unreachable_database_is_one_line_without_the_password(cli: Cli) -> None:
    dsn = f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:1/test"
    result = cli("--dsn", dsn, "--connect-timeout", "0.5", "check", str(uuid.uuid4()))
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in one_line(result.stderr)


def test_missing_dsn_is_one_line(cli: Cli) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("GMAIL_TOKEN_STORE_DSN", "DATABASE_URL")
    }
    assert SCRIPT is not None
    result = subprocess.run([SCRIPT, "list"], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 1 and "GMAIL_TOKEN_STORE_DSN" in one_line(result.stderr)


# --- list ----------------------------------------------------------------------------------


def test_list_shows_every_state_and_needs_attention_is_the_alert(
    cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    healthy = seeded(cli, seed, expires_in=3000, email="ok@gmail.com")
    due = seeded(cli, seed, expires_in=100, email="due@gmail.com")
    revoked_row = seed(expires_in=0, email="gone@gmail.com")
    cli.secrets |= {revoked_row.access_token, revoked_row.refresh_token}
    endpoint.revoke(revoked_row.refresh_token)
    assert cli("refresh", revoked_row.user_id).returncode == 1  # records invalid_grant
    broken = seeded(cli, seed, token_data=Jsonb("{oops"), email="broken@gmail.com")
    idle = seeded(cli, seed, expires_in=3000, updated_at=utcnow() - timedelta(days=170))

    everything = cli("list", "--json")
    assert everything.returncode == 0
    states = {entry["user_id"]: entry["state"] for entry in json.loads(everything.stdout)}
    assert states == {
        healthy: "ok",
        due: "refresh-due",
        revoked_row.user_id: "reauth-required",
        broken: "broken",
        idle: "idle",
    }

    alert = cli("list", "--needs-attention")
    assert alert.returncode == 1
    assert revoked_row.user_id in alert.stdout and "gone@gmail.com" in alert.stdout
    assert broken in alert.stdout and idle in alert.stdout
    assert healthy not in alert.stdout and due not in alert.stdout
    table = cli("list")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == [
        "USER_ID",
        "EMAIL",
        "ROBEING",
        "STATE",
        "LEFT",
        "LAST_REFRESH",
        "ACCOUNT",
    ]
    assert "5 grants, 3 need attention" in table.stdout
    rows = [line for line in table.stdout.splitlines()[1:] if line[:8] in states_prefixes(states)]
    assert len(rows) == 5 and all(line.rstrip().endswith("unverified") for line in rows)
    # A row that needs a person has its reason on the line below it, indented.
    lines = table.stdout.splitlines()
    below_broken = lines[next(i for i, line in enumerate(lines) if line.startswith(broken)) + 1]
    assert below_broken.startswith("    broken: ")


def states_prefixes(states: dict[str, str]) -> set[str]:
    return {user_id[:8] for user_id in states}


def test_needs_attention_exits_0_when_all_is_well(cli: Cli, seed: SeedRow) -> None:
    seeded(cli, seed, expires_in=3000)
    seeded(cli, seed, expires_in=-50)  # expired is normal: the next use refreshes it
    result = cli("list", "--needs-attention", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []


# --- refresh-all ---------------------------------------------------------------------------


def test_refresh_all_refreshes_exactly_the_due_rows(
    cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    due = {
        seeded(cli, seed, expires_in=expires)
        for expires in (-3600, -5, 0, 30, 60, 120, 200, 250, 299, 10)
    }
    for _ in range(10):
        seeded(cli, seed, expires_in=3000)

    result = cli("refresh-all", "--concurrency", "4")

    assert result.returncode == 0, result.stderr
    assert {r.refresh_token for r in endpoint.refresh_requests()} == {
        r for r in _refresh_tokens_of(cli, due)
    }
    assert len(endpoint.refresh_requests()) == 10
    assert "refreshed:             10" in result.stdout
    again = cli("refresh-all")
    assert again.returncode == 0 and len(endpoint.refresh_requests()) == 10


def _refresh_tokens_of(cli: Cli, user_ids: set[str]) -> set[str]:
    with psycopg.connect(cli.dsn) as conn:
        rows = conn.execute(
            "SELECT token_data->>'refresh_token' FROM gmail_token WHERE user_id = ANY(%s)",
            ([uuid.UUID(u) for u in user_ids],),
        ).fetchall()
    return {token for (token,) in rows}


def test_refresh_all_at_scale_refreshes_each_of_1000_rows_exactly_once(
    dsn: str, cli: Cli, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.05
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO gmail_token (user_id, token_data, oauth_config, expiry)"
            " SELECT gen_random_uuid(),"
            "  jsonb_build_object('access_token', 'ya29.scale-' || n,"
            "   'refresh_token', '1//scale-' || n),"
            "  %s, LOCALTIMESTAMP - interval '1 minute'"
            " FROM generate_series(1, 1000) AS n",
            (
                Jsonb(
                    {
                        "client_id": CLIENT_ID,
                        "client_secret": CLIENT_SECRET,
                        "token_uri": endpoint.token_uri,
                    }
                ),
            ),
        )
    result = cli("refresh-all", "--concurrency", "16")
    assert result.returncode == 0, result.stdout + result.stderr
    used = [r.refresh_token for r in endpoint.refresh_requests()]
    assert len(used) == 1000 and len(set(used)) == 1000  # every row once, none twice
    assert "refreshed:             1000" in result.stdout
    with psycopg.connect(dsn) as conn:
        stale = conn.execute(
            "SELECT count(*) FROM gmail_token WHERE expiry < LOCALTIMESTAMP"
        ).fetchone()
    assert stale == (0,)


def test_refresh_all_keeps_idle_grants_alive_and_reports_dead_ones(
    cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    idle = seeded(cli, seed, expires_in=3000, updated_at=utcnow() - timedelta(days=40))
    seeded(cli, seed, expires_in=3000)  # fresh and recently refreshed: left alone
    dead = seed(expires_in=0)
    cli.secrets |= {dead.access_token, dead.refresh_token}
    endpoint.revoke(dead.refresh_token)

    result = cli("refresh-all", "--idle-days", "30")

    assert result.returncode == 1  # a dead grant needs a person
    assert "refreshed:             1" in result.stdout
    assert f"need re-authorization: {dead.user_id}" in result.stdout
    assert {r.reply for r in endpoint.refresh_requests()} == {Reply.OK, Reply.INVALID_GRANT}
    assert json.loads(cli("check", idle).stdout)["seconds_since_refresh"] < 60


def test_two_refresh_all_runs_at_once_refresh_each_row_once(
    cli: Cli, seed: SeedRow, endpoint: FakeTokenEndpoint
) -> None:
    endpoint.latency = 0.1
    for _ in range(12):
        seeded(cli, seed, expires_in=10)
    assert SCRIPT is not None
    runs = [
        subprocess.Popen(
            [SCRIPT, "refresh-all", "--concurrency", "3"],
            env=cli.env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        cli.outputs += [out, err]
        assert run.returncode == 0, err
    assert len(endpoint.refresh_requests()) == 12


# --- authorize -----------------------------------------------------------------------------


def test_authorize_runs_the_consent_flow_with_the_test_as_the_browser(
    dsn: str, cli: Cli, endpoint: FakeTokenEndpoint, client_secrets: Path
) -> None:
    user_id = str(uuid.uuid4())
    assert SCRIPT is not None
    process = subprocess.Popen(
        [
            SCRIPT,
            *authorize(client_secrets, user_id, "--email", "passport@gmail.com", "--timeout", "60"),
        ],
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = ""
        deadline = time.monotonic() + 30
        while not url and time.monotonic() < deadline:
            line = process.stdout.readline()  # printed at once, even though stdout is a pipe
            cli.outputs.append(line)
            match = re.search(r"https?://\S+", line)
            url = match.group(0) if match else ""
        assert url.startswith(endpoint.auth_uri), url
        assert "gmail.send" in url and "access_type=offline" in url and "prompt=consent" in url

        # Act as the browser: choose the account on the consent page, then follow its
        # redirect to the command's loopback server.
        account = endpoint.add_account("passport@gmail.com")
        location = endpoint.consent(url, account=account)
        page = requests.get(location, timeout=30)
        assert page.status_code == 200 and "granted" in page.text
        out, err = process.communicate(timeout=60)
        cli.outputs += [out, err]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"authorized user {user_id} (passport@gmail.com)" in out
    [exchange] = endpoint.requests
    assert exchange.grant_type == "authorization_code" and exchange.client_secret == CLIENT_SECRET
    assert exchange.account == account and exchange.code_verifier  # the command sends PKCE
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT token_data, scopes, metadata, oauth_config FROM gmail_token WHERE user_id = %s",
            (user_id,),
        ).fetchone()
    assert row is not None
    token_data, scopes, metadata, oauth_config = row
    assert token_data["access_token"] == exchange.issued_access_token
    assert token_data["refresh_token"].startswith("1//fake-refresh-")
    cli.secrets.add(token_data["refresh_token"])
    assert set(scopes) == {GMAIL_SEND, "openid", "email"}  # the account is verified too
    assert metadata["email"] == "passport@gmail.com"
    assert metadata["google_account_id"] == account.sub and metadata["account_verified"] is True
    assert oauth_config["token_uri"] == endpoint.token_uri


def test_authorize_without_a_redirect_times_out_in_one_line(cli: Cli, client_secrets: Path) -> None:
    result = cli(
        *authorize(client_secrets, str(uuid.uuid4()), "--email", "a@gmail.com", "--timeout", "1")
    )
    assert result.returncode == 1
    assert "no authorization arrived within 1 s" in one_line(result.stderr)


def test_authorize_refuses_a_foreign_token_uri(
    cli: Cli, endpoint: FakeTokenEndpoint, client_secrets: Path
) -> None:
    config = json.loads(client_secrets.read_text())
    config["installed"]["token_uri"] = "https://evil.example.com/token"
    client_secrets.write_text(json.dumps(config))
    result = cli(*authorize(client_secrets, str(uuid.uuid4())))
    assert result.returncode == 1 and "token_uri" in one_line(result.stderr)
    assert endpoint.requests == []
