"""The README's row-level security recipe, with two service roles on one table.

Each service connects as its own role; a policy over `gmail_token_access` (which service
may use which user) filters every statement. The store's hot path, locked refresh, kept
grant save, check and keepalive work for the service's users, and another service's user
is `TokenNotFoundError`, exactly like a user nobody has: nothing tells that the row exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from google.oauth2.credentials import Credentials

from gmail_token_store import ConfigurationError, TokenEvent, TokenNotFoundError, TokenStore
from gmail_token_store.testing import FakeTokenEndpoint, FaultProxy, PostgresServer

from conftest import SeedRow
from helpers import wait_until

PASSWORD = "service-role-password-" + "R" * 10

#: The recipe, as the README gives it (run by the table's owner, or a superuser).
RECIPE = """
CREATE TABLE gmail_token_access (
    role_name name NOT NULL,
    user_id uuid NOT NULL,
    PRIMARY KEY (role_name, user_id)
);
ALTER TABLE gmail_token_access ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_entries ON gmail_token_access USING (role_name = current_user);

ALTER TABLE gmail_token ENABLE ROW LEVEL SECURITY;
CREATE POLICY service_users ON gmail_token
    USING (user_id IN (SELECT user_id FROM gmail_token_access))
    WITH CHECK (user_id IN (SELECT user_id FROM gmail_token_access));
"""
GRANTS = """
GRANT SELECT ON gmail_token_access TO {role};
GRANT SELECT, INSERT, UPDATE ON gmail_token TO {role};
GRANT USAGE ON SEQUENCE gmail_token_id_seq TO {role};
"""


def _admin(postgres: PostgresServer, statements: str) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(statements)


@pytest.fixture
def services(postgres: PostgresServer, dsn: str) -> Iterator[dict[str, str]]:
    """Two service roles, svc_mail and svc_crm, under the recipe; their DSNs."""
    _admin(postgres, "DROP TABLE IF EXISTS gmail_token_access")
    _admin(postgres, RECIPE)
    for role in ("svc_mail", "svc_crm"):
        _admin(postgres, f"DROP OWNED BY {role}" if _exists(postgres, role) else "SELECT 1")
        _admin(postgres, f"DROP ROLE IF EXISTS {role}")
        _admin(postgres, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        _admin(postgres, GRANTS.format(role=role))
    yield {
        role: f"postgresql://{role}:{quote(PASSWORD)}@127.0.0.1:{postgres.port}/test"
        for role in ("svc_mail", "svc_crm")
    }
    _admin(postgres, "DROP TABLE IF EXISTS gmail_token_access CASCADE")
    for role in ("svc_mail", "svc_crm"):
        _admin(postgres, f"DROP OWNED BY {role}")
        _admin(postgres, f"DROP ROLE {role}")


def _exists(postgres: PostgresServer, role: str) -> bool:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            is not None
        )


def _grant(postgres: PostgresServer, role: str, user_id: str) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO gmail_token_access VALUES (%s, %s)", (role, user_id))


def test_each_service_uses_its_own_users_and_another_services_user_is_not_found(
    postgres: PostgresServer,
    services: dict[str, str],
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
) -> None:
    mine, due, theirs = seed(expires_in=3000), seed(expires_in=30), seed(expires_in=3000)
    for row in (mine, due):
        _grant(postgres, "svc_mail", row.user_id)
    _grant(postgres, "svc_crm", theirs.user_id)
    mail = make_store(conninfo=services["svc_mail"])

    assert mail.get_credentials(mine.user_id).token == mine.access_token  # the hot path
    refreshed = mail.get_credentials(due.user_id)  # the locked refresh and its write-back
    assert refreshed.token == endpoint.refresh_requests()[-1].issued_access_token
    assert mail.check(mine.user_id).state == "ok"
    assert {status.user_id for status in mail.check_all()} == {mine.user_id, due.user_id}

    nobodys = "dddddddd-dddd-dddd-dddd-dddddddddddd"
    for user in (
        theirs.user_id,
        nobodys,
    ):  # the same answer for a row that exists and one that does not
        with pytest.raises(TokenNotFoundError) as caught:
            mail.get_credentials(user)
        assert str(caught.value) == str(TokenNotFoundError(user))
        assert mail.check(user).to_dict() == {**mail.check(nobodys).to_dict(), "user_id": user}
        with pytest.raises(TokenNotFoundError):
            mail.refresh(user, force=True)
    refusals = []
    for user in (theirs.user_id, nobodys):
        with pytest.raises(ConfigurationError) as refused:
            mail.save(user, Credentials("ya29.x", refresh_token="1//x"))
        refusals.append(str(refused.value).replace(user, "USER"))
    assert refusals[0] == refusals[1] and "row-level security" in refusals[0]

    report = mail.refresh_all(within=3600)  # the keepalive refreshes its own rows only
    assert report.checked == 2 and report.refreshed == 2
    crm = make_store(conninfo=services["svc_crm"])
    assert crm.get_credentials(theirs.user_id).token == theirs.access_token  # untouched
    with pytest.raises(TokenNotFoundError):
        crm.get_credentials(mine.user_id)


def test_a_kept_grant_is_saved_by_compare_and_set_under_the_policy(
    postgres: PostgresServer,
    services: dict[str, str],
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: Callable[[str], dict[str, Any]],
) -> None:
    row = seed(expires_in=-10)
    _grant(postgres, "svc_mail", row.user_id)
    endpoint.rotate_refresh_tokens = endpoint.revoke_rotated = True
    events: list[TokenEvent] = []
    with FaultProxy(postgres.port) as proxy:
        store = make_store(conninfo=proxy.dsn(services["svc_mail"]), on_event=events.append)
        # The refresher's connection is reset while the token endpoint answers: the
        # write-back fails and the grant is kept, then written by compare-and-set (on a
        # fresh connection, once the server has ended the reset session and its lock).
        endpoint.on_request = lambda _token: proxy.reset()
        credentials = store.get_credentials(row.user_id)
        endpoint.on_request = None
        issued = endpoint.refresh_requests()[-1]
        assert credentials.token == issued.issued_access_token

        def saved() -> bool:
            assert store.get_credentials(row.user_id).token == issued.issued_access_token
            stored = fetch_row(row.user_id)["token_data"]["refresh_token"]
            return bool(stored == issued.issued_refresh_token)

        wait_until(saved, timeout=10)
    assert "grant_restored" in [event.kind for event in events]
    assert len(endpoint.refresh_requests()) == 1
