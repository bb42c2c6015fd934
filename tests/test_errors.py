"""One error hierarchy: no psycopg exception reaches a caller, and each says who must act.

Missing table or column, a lacking privilege, a refused password, an unknown database or
role, an unusable DSN: a ConfigurationError naming the cause, within about a second.
Nothing listening, a connection that dropped or timed out: a retryable
DatabaseUnavailableError (after one retry on a fresh connection where that is safe).
Every CLI command prints these on one line, exit 1, no traceback.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials

from gmail_token_store import (
    ConfigurationError,
    DatabaseUnavailableError,
    TokenStore,
    TokenStoreError,
)
from gmail_token_store._core.effects import Flow, Query, Statement
from gmail_token_store.testing import FakeTokenEndpoint, FaultProxy, PostgresServer

from conftest import CLIENT_ID, CLIENT_SECRET, SeedRow
from helpers import DSN_PASSWORD, AsyncFacade, Cli, idle_connections

PASSWORD = "right-password-" + "W" * 8


def _admin(postgres: PostgresServer, statement: str) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(statement)


def _role_dsn(postgres: PostgresServer, role: str, password: str = PASSWORD) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{role}{secret}@127.0.0.1:{postgres.port}/test"


@pytest.fixture(scope="module")
def roles(postgres: PostgresServer) -> Iterator[None]:
    """pwuser, reader (SELECT only), nobody (no privilege), idler (the server ends its idle
    sessions after 300 ms), all with PASSWORD; and a role that does not exist."""
    hba = postgres.base_dir / "data" / "pg_hba.conf"
    original = hba.read_text()
    for role in ("pwuser", "reader", "nobody", "idler"):
        _admin(postgres, f"DROP ROLE IF EXISTS {role}")
        _admin(postgres, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    _admin(postgres, "ALTER ROLE idler SET idle_session_timeout = '300ms'")
    # The server asks every role for a password, and for a role that does not exist it
    # says only that the password was refused (not to tell which roles exist): trust for
    # that one name lets it say "does not exist". No one can log in through this line.
    hba.write_text("host all no_such_role 127.0.0.1/32 trust\n" + original)
    _admin(postgres, "SELECT pg_reload_conf()")
    yield
    hba.write_text(original)
    _admin(postgres, "SELECT pg_reload_conf()")


def _grant(postgres: PostgresServer, privileges: str, role: str) -> None:
    _admin(postgres, f"GRANT {privileges} ON gmail_token TO {role}")


def _operations(store: TokenStore, user_id: str) -> dict[str, Callable[[], object]]:
    credentials = Credentials(
        "ya29.saved-" + "s" * 20,
        refresh_token="1//saved-" + "r" * 12,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    return {
        "get_credentials": lambda: store.get_credentials(user_id),
        "check": lambda: store.check(user_id),
        "check_all": store.check_all,
        "refresh": lambda: store.refresh(user_id, force=True),
        "save": lambda: store.save(user_id, credentials),
    }


# --- the schema -------------------------------------------------------------------------


def test_missing_table_is_a_configuration_error_that_says_to_run_init_db(
    dsn: str, make_store: Callable[..., TokenStore]
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE gmail_token")
    store = make_store()
    for name, operation in _operations(store, str(uuid.uuid4())).items():
        with pytest.raises(ConfigurationError, match="init-db") as caught:
            operation()
        assert not caught.value.retryable, name


def test_missing_column_is_a_configuration_error_naming_it(
    dsn: str, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    row = seed()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE gmail_token DROP COLUMN scopes")
    store = make_store()
    for operation in _operations(store, row.user_id).values():
        with pytest.raises(ConfigurationError, match='column "scopes" does not exist'):
            operation()


# --- privileges ---------------------------------------------------------------------------


@pytest.mark.usefixtures("roles")
def test_missing_privilege_is_a_configuration_error_naming_it(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    fresh, due = seed(expires_in=3000), seed(expires_in=-5)
    nobody = make_store(conninfo=_role_dsn(postgres, "nobody"))
    with pytest.raises(ConfigurationError, match="needs the SELECT privilege") as caught:
        nobody.get_credentials(fresh.user_id)
    assert not caught.value.retryable

    _grant(postgres, "SELECT", "reader")
    reader = make_store(conninfo=_role_dsn(postgres, "reader"))
    assert reader.get_credentials(fresh.user_id).token == fresh.access_token
    with pytest.raises(ConfigurationError, match="needs the SELECT, UPDATE privilege"):
        reader.get_credentials(due.user_id)  # the row lock needs UPDATE
    with pytest.raises(ConfigurationError, match="privilege"):
        reader.save(str(uuid.uuid4()), Credentials("ya29.x-" + "x" * 20))


# --- connecting ---------------------------------------------------------------------------


@pytest.mark.usefixtures("roles")
@pytest.mark.parametrize(
    ("conninfo", "cause"),
    [
        ("pwuser:wrong-password@", "the password was refused"),
        ("pwuser@", "the server wants a password"),
        ("no_such_role@", "the role (user) does not exist: role 'no_such_role'"),
        ("postgres:{password}@/no_such_db", "the database does not exist: database 'no_such_db'"),
    ],
    ids=["wrong password", "no password", "unknown role", "unknown database"],
)
def test_refused_connection_is_a_configuration_error_within_a_second(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], conninfo: str, cause: str
) -> None:
    user, _, database = conninfo.format(password=postgres.password).partition("@")
    dsn = f"postgresql://{user}@127.0.0.1:{postgres.port}{database or '/test'}"
    store = make_store(conninfo=dsn, connect_timeout=10)
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        store.get_credentials(str(uuid.uuid4()))
    assert time.monotonic() - began < 1.5
    assert cause in str(caught.value)
    assert "wrong-password" not in str(caught.value)
    assert postgres.password not in str(caught.value)
    assert caught.value.__cause__ is None  # libpq's text is not chained: it may quote the DSN


@pytest.mark.parametrize(
    "conninfo",
    ["postgresql://u:p@127.0.0.1:notaport/db", "host=127.0.0.1 port=foo password=hunter2"],
    ids=["URL", "key=value"],
)
def test_unusable_port_is_a_configuration_error_within_a_second(
    make_store: Callable[..., TokenStore], conninfo: str
) -> None:
    began = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        make_store(conninfo=conninfo, connect_timeout=10).get_credentials(str(uuid.uuid4()))
    assert time.monotonic() - began < 1.5
    assert "hunter2" not in str(caught.value) and "u:p" not in str(caught.value)


def test_nothing_listening_is_retryable_within_connect_timeout(
    make_store: Callable[..., TokenStore],
) -> None:
    store = make_store(conninfo=f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:1/test")
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="nothing is listening") as caught:
        store.get_credentials(str(uuid.uuid4()))
    assert caught.value.retryable and time.monotonic() - began < 2
    assert DSN_PASSWORD not in str(caught.value)


def test_a_server_that_never_answers_is_retryable_after_connect_timeout(
    postgres: PostgresServer, make_store: Callable[..., TokenStore]
) -> None:
    with FaultProxy(postgres.port) as proxy:  # accepts, then no answer ever comes
        proxy.blackhole()
        store = make_store(conninfo=proxy.dsn(postgres.dsn), connect_timeout=2)
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as caught:
            store.get_credentials(str(uuid.uuid4()))
        assert caught.value.retryable
        assert 1.5 < time.monotonic() - began < 4


# --- connections that break -----------------------------------------------------------------


@pytest.mark.usefixtures("roles")
def test_a_session_the_server_ended_while_idle_is_replaced_without_an_error(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    _grant(postgres, "SELECT, UPDATE", "idler")
    row = seed()
    store = make_store(conninfo=_role_dsn(postgres, "idler"))
    for _ in range(3):
        assert store.get_credentials(row.user_id).token == row.access_token
        time.sleep(0.5)  # the server ends the idle session (57P05) in the meantime


def test_a_reset_connection_is_retried_on_a_fresh_one(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    row = seed()
    with FaultProxy(postgres.port) as proxy:
        store = make_store(conninfo=proxy.dsn(postgres.dsn))
        assert store.get_credentials(row.user_id).token == row.access_token
        proxy.delay(0.5)
        outcome: list[Any] = []
        caller = threading.Thread(target=lambda: outcome.append(store.get_credentials(row.user_id)))
        caller.start()
        time.sleep(0.2)  # the query is on its way
        proxy.reset()
        proxy.heal()
        caller.join(timeout=10)
        assert [credentials.token for credentials in outcome] == [row.access_token]


def test_connections_that_keep_breaking_give_a_retryable_error_not_a_driver_one(
    postgres: PostgresServer, make_store: Callable[..., TokenStore], seed: SeedRow
) -> None:
    row = seed()
    with FaultProxy(postgres.port) as proxy:
        store = make_store(conninfo=proxy.dsn(postgres.dsn), connect_timeout=2)
        assert store.get_credentials(row.user_id).token == row.access_token
        stop = threading.Event()
        proxy.delay(0.2)  # every query is in flight long enough to be cut

        def keep_resetting() -> None:
            while not stop.is_set():
                proxy.reset()
                time.sleep(0.05)

        resetter = threading.Thread(target=keep_resetting)
        resetter.start()
        try:
            for _ in range(5):
                with pytest.raises(TokenStoreError) as caught:
                    store.get_credentials(row.user_id)
                assert isinstance(caught.value, DatabaseUnavailableError) and caught.value.retryable
        finally:
            stop.set()
            resetter.join()


# --- the command ----------------------------------------------------------------------------

ERROR_CASES = {
    "no table": ("drop table", "init-db"),
    "no column": ("drop column", 'column "metadata" does not exist'),
    "no privilege": ("nobody", "needs the SELECT"),
    "wrong password": ("pwuser:nope", "the password was refused"),
    "unknown database": ("postgres@/no_such_db", "the database does not exist"),
    "unknown role": ("no_such_role", "the role (user) does not exist"),
    "unusable DSN": ("port=foo", "the DSN cannot be used"),
    "nothing listening": ("port 1", "nothing is listening"),
}
COMMANDS = {
    "check": ["check", "{user}"],
    "refresh": ["refresh", "{user}"],
    "list": ["list"],
    "list --json": ["list", "--json"],
    "list --needs-attention": ["list", "--needs-attention"],
    "refresh-all": ["refresh-all"],
    "import": ["import", "{file}", "--user-id", "{user}"],
}


@pytest.mark.usefixtures("roles")
@pytest.mark.parametrize("case", ERROR_CASES)
def test_every_command_reports_database_problems_in_one_line(
    postgres: PostgresServer,
    dsn: str,
    cli: Cli,
    endpoint: FakeTokenEndpoint,
    seed: SeedRow,
    tmp_path: Any,
    case: str,
) -> None:
    how, expected = ERROR_CASES[case]
    row = seed()
    cli.secrets |= {row.access_token, row.refresh_token}
    token_file = tmp_path / "token.json"
    token_file.write_text(
        Credentials(
            "ya29.file-" + "f" * 20,
            refresh_token="1//file-" + "r" * 12,
            token_uri=endpoint.token_uri,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        ).to_json()
    )
    target = cli.dsn
    if how == "drop table":
        _admin(postgres, "DROP TABLE gmail_token")
    elif how == "drop column":
        _admin(postgres, "ALTER TABLE gmail_token DROP COLUMN metadata")
    elif how == "nobody":
        target = _role_dsn(postgres, "nobody")
        cli.secrets.add(PASSWORD)
    elif how == "pwuser:nope":
        target = _role_dsn(postgres, "pwuser", DSN_PASSWORD)
    elif how == "postgres@/no_such_db":
        target = cli.dsn.replace("/test", "/no_such_db")
    elif how == "no_such_role":
        target = _role_dsn(postgres, "no_such_role", DSN_PASSWORD)
    elif how == "port=foo":
        target = f"host=127.0.0.1 port=foo dbname=test password={DSN_PASSWORD}"
    else:
        target = f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1:1/test"
    cli.dsn = target
    for name, template in COMMANDS.items():
        args = [part.format(user=row.user_id, file=token_file) for part in template]
        result = cli(*args)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
        assert lines[0].startswith("gmail-token-store: error: ") and expected in lines[0], (
            name,
            lines[0],
        )


def test_a_row_for_another_user_is_never_handed_out_and_its_connection_is_discarded(
    store: TokenStore, seed: SeedRow
) -> None:
    # A connection out of step answers the previous caller's query: here, a statement
    # asked for `theirs` while the caller expects `mine`, as a desynchronized socket would.
    mine, theirs = seed(), seed()
    store.get_credentials(mine.user_id)  # one pooled connection
    [before] = idle_connections(store)
    query = Query(Statement.READ_ROW, {"user_id": theirs.user_id}, user_id=mine.user_id)

    def drive() -> Any:
        if isinstance(store, AsyncFacade):
            return store.call(store.store._io.drive(_one(query)))
        return store._io.drive(_one(query))

    with pytest.raises(DatabaseUnavailableError, match="not user") as caught:
        drive()
    assert caught.value.retryable
    assert before.closed and idle_connections(store) == []  # discarded, not reused
    assert store.get_credentials(mine.user_id).token == mine.access_token


def _one(query: Query) -> Flow[Any]:
    return (yield from query)
