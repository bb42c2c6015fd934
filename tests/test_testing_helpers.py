"""gmail_token_store.testing is public: its fake endpoint and servers behave as documented."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from gmail_token_store import testing
from gmail_token_store.testing import (
    FakeTokenEndpoint,
    PgBouncerServer,
    PostgresServer,
    ReplicatedPostgres,
    Reply,
    throwaway_pgbouncer,
    throwaway_postgresql,
    throwaway_replicated_postgresql,
)


def post_refresh(endpoint: FakeTokenEndpoint, refresh_token: str = "1//r") -> requests.Response:
    return requests.post(
        endpoint.token_uri,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "c"},
        timeout=10,
    )


def test_fake_endpoint_answers_scripted_replies_in_order_then_the_default(
    endpoint: FakeTokenEndpoint,
) -> None:
    endpoint.script(Reply.SERVER_ERROR, Reply.BAD_GATEWAY_HTML, Reply.RATE_LIMITED)
    answers = [post_refresh(endpoint) for _ in range(4)]
    assert [a.status_code for a in answers] == [500, 502, 429, 200]
    assert answers[1].headers["Content-Type"] == "text/html"
    assert answers[3].json()["access_token"] == endpoint.requests[3].issued_access_token
    assert [r.reply for r in endpoint.requests] == [
        Reply.SERVER_ERROR,
        Reply.BAD_GATEWAY_HTML,
        Reply.RATE_LIMITED,
        Reply.OK,
    ]


def test_fake_endpoint_revokes_only_the_given_refresh_token(endpoint: FakeTokenEndpoint) -> None:
    endpoint.revoke("1//dead")
    dead, alive = post_refresh(endpoint, "1//dead"), post_refresh(endpoint, "1//alive")
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert alive.status_code == 200


def test_fake_endpoint_hang_holds_the_request_until_released(endpoint: FakeTokenEndpoint) -> None:
    endpoint.default = Reply.HANG
    began = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        post_refresh_with_timeout(endpoint, 0.3)
    assert time.monotonic() - began >= 0.3
    endpoint.release()
    with pytest.raises(requests.exceptions.ConnectionError):
        post_refresh_with_timeout(endpoint, 5)  # released hangs close without an answer


def post_refresh_with_timeout(endpoint: FakeTokenEndpoint, timeout: float) -> None:
    requests.post(endpoint.token_uri, data={"grant_type": "refresh_token"}, timeout=timeout)


def test_fake_endpoint_latency_delays_every_answer() -> None:
    with FakeTokenEndpoint(latency=0.2) as endpoint:
        began = time.monotonic()
        assert post_refresh(endpoint).status_code == 200
        assert time.monotonic() - began >= 0.2


def test_missing_server_binary_says_which_package_to_install() -> None:
    with pytest.raises(RuntimeError, match="install the Debian package `no-such-package`"):
        testing._servers._find_binary("no-such-binary-gmail-token-store", "no-such-package")


# The throwaway servers run in consumers' CI, on shared runners and laptops: no other local
# account may use them, and the account they run as may not change what root runs. These
# tests act as those accounts, with real processes (as root, setpriv switches to them).


@pytest.fixture(scope="module")
def replicated() -> Iterator[ReplicatedPostgres]:
    with throwaway_replicated_postgresql() as servers:
        yield servers


@pytest.fixture(scope="module")
def bouncer(postgres: PostgresServer) -> Iterator[PgBouncerServer]:
    with throwaway_pgbouncer(postgres.port, password=postgres.password) as server:
        yield server


def server_named(request: pytest.FixtureRequest, target: str) -> Any:
    """The module's PgBouncer, or the primary or standby of its replicated pair."""
    if target == "pgbouncer":
        return request.getfixturevalue("bouncer")
    pair: ReplicatedPostgres = request.getfixturevalue("replicated")
    return pair.standby if target == "standby" else pair.primary


def as_account(account: str, *command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run `command` as the local `account`, with nothing of our environment but PATH."""
    assert os.geteuid() == 0, "this test acts as other local accounts: run the suite as root"
    entry = pwd.getpwnam(account)
    user = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
    return subprocess.run(
        ["setpriv", *user, "--", *command],
        env={"PATH": "/usr/bin:/bin", "HOME": "/"},  # no PGPASSWORD, no ~/.pgpass
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def psql_as_nobody(dsn: str, *, replication: bool) -> subprocess.CompletedProcess[str]:
    """`nobody` runs a query (on a replication connection: IDENTIFY_SYSTEM) with `dsn`."""
    psql = testing._servers._find_binary("psql", "postgresql-client")
    target = f"{dsn}?replication=true" if replication else dsn
    query = "IDENTIFY_SYSTEM" if replication else "SELECT current_user"
    return as_account("nobody", psql, "-w", "-X", "-A", "-t", "-d", target, "-c", query)


def without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))


@pytest.mark.parametrize("target", ["primary", "standby", "replication", "pgbouncer"])
def test_another_local_account_without_the_password_is_refused(
    request: pytest.FixtureRequest, target: str
) -> None:
    server = server_named(request, "primary" if target == "replication" else target)
    replication = target == "replication"

    refused = psql_as_nobody(without_password(server.dsn), replication=replication)
    allowed = psql_as_nobody(server.dsn, replication=replication)

    assert refused.returncode != 0, f"nobody connected without a password: {refused.stdout}"
    assert "password" in refused.stderr, refused.stderr  # refused for that, not unreachable
    assert allowed.returncode == 0, allowed.stderr  # what the DSN carries is enough


#: Run as the server account: print each path read from stdin that it may write.
WRITABLE = 'while IFS= read -r path; do [ -w "$path" ] && printf "%s\\n" "$path"; done; true'


@pytest.mark.parametrize("target", ["primary", "standby", "pgbouncer"])
def test_the_server_account_can_write_only_its_data_and_socket_directories(
    request: pytest.FixtureRequest, target: str
) -> None:
    server = server_named(request, target)
    owned = () if target == "pgbouncer" else ("data", "tmp")  # PgBouncer logs to our pipe
    paths = [server.base_dir, *server.base_dir.iterdir()]
    for top in paths[1:]:
        if top.is_dir() and top.name not in owned:
            paths += top.rglob("*")

    writable = as_account("postgres", "sh", "-c", WRITABLE, stdin="".join(f"{p}\n" for p in paths))

    assert sorted(writable.stdout.splitlines()) == [str(server.base_dir / name) for name in owned]


#: Run as the server account: for every wrapper root runs, add a script beside it, overwrite
#: it and rename a script over it. The script records who ran it, then does the wrapper's job.
ATTACK = """
marker=$1 stash=$2; shift 2
for wrapper do
    copy="$stash/$(basename "$wrapper")"
    cp "$wrapper" "$copy"
    printf '#!/bin/sh\\nid -u >> %s\\nexec /bin/sh %s "$@"\\n' "$marker" "$copy" > "$copy.new"
    chmod 755 "$copy.new"
    cp "$copy.new" "$wrapper.added" && echo "added beside $wrapper"
    (cat "$copy.new" > "$wrapper") && echo "overwrote $wrapper"
    mv -f "$copy.new" "$wrapper" && echo "renamed over $wrapper"
done 2>/dev/null
true
"""


@pytest.mark.parametrize("target", ["primary", "standby"])
def test_the_server_account_cannot_swap_what_root_runs_at_a_restart(
    tmp_path: Path, target: str
) -> None:
    postgres = pwd.getpwnam("postgres")
    marker = tmp_path / "ran-as"
    with contextlib.ExitStack() as stack:
        stash = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="attacker-")))
        os.chown(stash, postgres.pw_uid, postgres.pw_gid)  # the server account's own place
        if target == "primary":
            server: Any = stack.enter_context(throwaway_postgresql())
        else:
            server = stack.enter_context(throwaway_replicated_postgresql()).standby
        wrappers = sorted(str(path) for path in server.base_dir.rglob("as-postgres-*"))
        assert wrappers, "as root, the servers run through setpriv wrappers"

        attack = as_account(
            "postgres", "sh", "-c", ATTACK, "sh", str(marker), str(stash), *wrappers
        )
        server.stop_serving()
        server.start_serving()

        assert not marker.exists(), f"root ran the server account's script: {marker.read_text()}"
        assert attack.stdout.splitlines() == []
        with psycopg.connect(server.dsn, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_servers_reprs_do_not_show_the_password(
    replicated: ReplicatedPostgres, bouncer: PgBouncerServer, postgres: PostgresServer
) -> None:
    servers = [(server, replicated.primary.password) for server in (replicated, replicated.standby)]
    for server, password in [*servers, (postgres, postgres.password), (bouncer, postgres.password)]:
        assert password in server.dsn and password not in repr(server)


def test_the_servers_do_not_inherit_roots_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI job's secrets in root's environment must not reach the postgres account's
    processes (which it could read in /proc/<pid>/environ)."""
    assert os.geteuid() == 0, "this test checks the setpriv wrappers: run the suite as root"
    monkeypatch.setenv("CI_DEPLOY_TOKEN", "planted-ci-secret-" + "C" * 12)
    with throwaway_postgresql() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        postmaster = int(Path(f"/proc/{row[0]}/status").read_text().split("PPid:")[1].split()[0])
        environment = Path(f"/proc/{postmaster}/environ").read_bytes()
        assert b"planted-ci-secret-" not in environment
        assert b"LC_ALL=C.UTF-8" in environment  # the wrapper's own, fresh environment
