"""Rows for tests: a grant in the production layout, inserted directly with psycopg."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .. import GMAIL_SEND

#: The OAuth client of rows made by `insert_grant` unless told otherwise.
FAKE_CLIENT_ID = "fake-client-id.apps.googleusercontent.com"
FAKE_CLIENT_SECRET = "fake-client-secret"


@dataclass(frozen=True, slots=True)
class InsertedGrant:
    """A row `insert_grant` made: its user id and the tokens it holds."""

    user_id: str
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)


def insert_grant(
    dsn: str,
    *,
    token_uri: str,
    expires_in: float | None = 3600,
    email: str | None = "user@gmail.com",
    scopes: Sequence[str] | Any = (GMAIL_SEND,),
    user_id: str | None = None,
    client_id: str = FAKE_CLIENT_ID,
    client_secret: str = FAKE_CLIENT_SECRET,
    **columns: Any,
) -> InsertedGrant:
    """Insert one grant in the production layout into gmail_token; return what it holds.

    Args:
        token_uri: where the row's refresh goes: a `FakeTokenEndpoint.token_uri`.
        expires_in: seconds until the access token expires, by the database's clock
            (negative: expired; None: no expiry stored).
        scopes: a list or tuple of scopes, or the column's value as it is (None, Jsonb,
            JSON text).
        email, user_id, client_id, client_secret: the row's values.
        **columns: any column's value instead (token_data, metadata, robeing_id, ...).
    """
    user = user_id or str(uuid.uuid4())
    access_token = "ya29.test-" + secrets.token_urlsafe(18)
    refresh_token = "1//test-" + secrets.token_urlsafe(18)
    values: dict[str, Any] = {
        "user_id": user,
        "token_data": Jsonb(
            {"access_token": access_token, "refresh_token": refresh_token, "token_type": "Bearer"}
        ),
        "oauth_config": Jsonb(
            {"client_id": client_id, "client_secret": client_secret, "token_uri": token_uri}
        ),
        "scopes": Jsonb(list(scopes)) if isinstance(scopes, list | tuple) else scopes,
        "metadata": Jsonb({"email": email} if email else {}),
        "expiry": expires_in,
    }
    values.update(columns)
    names = ", ".join(values)
    placeholders = ", ".join(
        # The expiry is counted on the database's clock, in naive UTC like every writer's.
        "now() AT TIME ZONE 'UTC' + make_interval(secs => %(expiry)s)"
        if name == "expiry" and not _is_value(values["expiry"])
        else f"%({name})s"
        for name in values
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO gmail_token ({names}) VALUES ({placeholders})", values)
    return InsertedGrant(user, access_token, refresh_token)


def _is_value(expiry: Any) -> bool:
    """A literal column value (a datetime, or None) rather than seconds from now."""
    return expiry is None or not isinstance(expiry, int | float)
