"""`make demo`: the main job on embedded defaults, no network, no Google account.

A throwaway PostgreSQL with the production `gmail_token` table, the fake Google token
endpoint on loopback, and one user whose access token expires in a minute. The store
refreshes it on the first `get_credentials` and writes it back under the row lock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND, TokenStore, create_table
from gmail_token_store.testing import FakeTokenEndpoint, throwaway_postgresql

USER_ID = "dddddddd-dddd-dddd-dddd-dddddddddddd"


def shown(token: str) -> str:
    """Enough of a token to see that it changed, never enough to use it."""
    return token[:10] + "…"


def stored_token(dsn: str) -> tuple[str, datetime]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT token_data->>'access_token', expiry FROM gmail_token WHERE user_id = %s",
            (USER_ID,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def main() -> None:
    print("Starting a throwaway PostgreSQL and the fake Google token endpoint (loopback only)…")
    with throwaway_postgresql() as postgres, FakeTokenEndpoint() as endpoint:
        create_table(postgres.dsn)  # what `gmail-token-store init-db` runs
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, scopes,"
                " metadata, expiry) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    USER_ID,
                    "robeing-demo",
                    Jsonb(
                        {
                            "access_token": "ya29.demo-old-access-token-0000",
                            "refresh_token": "1//demo-refresh-token",
                            "token_type": "Bearer",
                        }
                    ),
                    Jsonb(
                        {
                            "client_id": "demo-client.apps.googleusercontent.com",
                            "client_secret": "demo-client-secret",
                            "token_uri": endpoint.token_uri,
                        }
                    ),
                    Jsonb([GMAIL_SEND]),
                    Jsonb({"email": "test@gmail.com", "source_file": "token.json"}),
                    datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1),
                ),
            )
        before, before_expiry = stored_token(postgres.dsn)
        print(f"\nSeeded user {USER_ID}: access token {shown(before)}", end=" ")
        print(f"expires {before_expiry:%H:%M:%S} UTC")

        with TokenStore(postgres.dsn, allow_loopback_token_uri=True) as store:
            print("\ncheck (what auth-server's /api/gmail/check answered):")
            print(json.dumps(store.check(USER_ID).to_dict(), indent=2))

            credentials = store.get_credentials(USER_ID, scopes=[GMAIL_SEND])
            after, after_expiry = stored_token(postgres.dsn)
            print("\nget_credentials(user_id, scopes=[gmail.send]):")
            print(f"  credentials.valid = {credentials.valid}", end=", ")
            print(f"expiry {credentials.expiry:%H:%M:%S} UTC")
            refreshed = after != before and after == credentials.token
            print(
                f"  REFRESHED: the row now holds a new access token {shown(after)} "
                f"(was {shown(before)}), expiring {after_expiry:%H:%M:%S} UTC"
                if refreshed
                else "  NOT refreshed: the row still holds the old token"
            )
            print(f"  token requests made to the endpoint: {len(endpoint.refresh_requests())}")

            again = store.get_credentials(USER_ID)
            print(f"  a second call is served from the cache: same object = {again is credentials}")

            print("\ncheck again:")
            print(json.dumps(store.check(USER_ID).to_dict(), indent=2))
    print("\nDone: the database and the endpoint are gone.")


if __name__ == "__main__":
    main()
