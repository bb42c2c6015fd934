"""Every SQL statement the library sends, in one place; the only file that takes row locks.

Reads select the JSONB columns as text and decode them in `_record` (psycopg's JSONB loader
costs a few microseconds per column on the hot path), the row version (`xmin`, which every
write changes whatever the layout of the row, JSON text included) and the database's own
clock (`statement_timestamp()`), so that freshness is judged by one clock for every host
without an extra round trip.

Nothing here is session-scoped (no SET, no advisory locks, no LISTEN): the timeouts are
transaction-local, so the statements are safe behind PgBouncer in transaction mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

TABLE = "gmail_token"


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement and the table privilege it needs (named in permission errors)."""

    text: str
    privilege: str


#: Row layout of every read (see `_record.parse_row`): ten columns, then the extras below.
COLUMNS = (
    "id, user_id::text, robeing_id, token_data::text, oauth_config::text, scopes::text,"
    " metadata::text, expiry, updated_at, xmin::text"
)
#: Index of the expiry column in COLUMNS (its type, timestamp or timestamptz, decides how
#: an expiry is written back).
EXPIRY_COLUMN = 7
#: The database's clock as seconds since the epoch, appended to every read.
_DB_CLOCK = "extract(epoch from statement_timestamp())::float8"
#: ... and its wall clock in its own time zone, which `updated_at` is written in.
_DB_LOCAL_TIME = "LOCALTIMESTAMP"

#: The hot path: one row by user id, and the database's clock.
READ_ROW = Statement(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE user_id = %s", privilege="SELECT"
)
#: A row for a health check: also the database's local time (for idle detection).
CHECK_ROW = Statement(
    f"SELECT {COLUMNS}, {_DB_CLOCK}, {_DB_LOCAL_TIME} FROM {TABLE} WHERE user_id = %s",
    privilege="SELECT",
)
#: Every row, oldest first, for listings and the keepalive.
LIST_ROWS = Statement(
    f"SELECT {COLUMNS}, {_DB_CLOCK}, {_DB_LOCAL_TIME} FROM {TABLE} ORDER BY id",
    privilege="SELECT",
)

_LOCK_ROW = f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE user_id = {{}} FOR NO KEY UPDATE"
#: Privileges the locked refresh needs: the row lock and the write-back.
REFRESH_PRIVILEGE = "SELECT, UPDATE"


def lock_row(user_id: str, *, wait_ms: int | None, idle_timeout_ms: int) -> sql.Composed:
    """Transaction-local timeouts and the row lock, sent as one simple query after BEGIN
    (which the store adds on an autocommit connection; psycopg begins on any other).

    `wait_ms=None` only tries the lock (SKIP LOCKED: no row comes back if another
    transaction holds it). Nothing here is a bound parameter, so nothing secret may go in:
    the user id is a canonical UUID (`parse_user_id`) quoted by psycopg, the rest are ints.
    The idle-in-transaction timeout frees the row if this host dies mid-refresh without
    closing its socket; it is longer than a whole refresh, so it never cuts ours short.
    """
    timeouts = (
        f"SELECT set_config('lock_timeout', '{max(wait_ms or 0, 1)}ms', true),"
        f" set_config('idle_in_transaction_session_timeout', '{idle_timeout_ms}ms', true)"
    )
    lock = _LOCK_ROW if wait_ms is not None else _LOCK_ROW + " SKIP LOCKED"
    return sql.SQL(timeouts + "; " + lock).format(sql.Literal(user_id))


_RETURNING = f" RETURNING {COLUMNS}, {_DB_CLOCK}"
_SET_GRANT = (
    f"UPDATE {TABLE} SET token_data = %s::jsonb, expiry = %s,"
    " scopes = COALESCE(%s::jsonb, scopes),"
    " metadata = CASE WHEN %s THEN %s::jsonb ELSE metadata END,"
    " updated_at = CURRENT_TIMESTAMP WHERE id = %s"
)
#: Write a refreshed grant into a row this transaction has locked.
WRITE_GRANT = Statement(_SET_GRANT + _RETURNING, privilege="UPDATE")
#: Write a grant without holding the lock, only if the row is still the version we read
#: (a compare-and-set: `xmin` changes with every write, whatever the row's layout). A row
#: locked by another transaction is skipped, not waited for: the caller tries again later.
WRITE_GRANT_IF_VERSION = Statement(
    f"WITH target AS (SELECT id AS target_id FROM {TABLE} WHERE id = %s AND xmin = %s::xid"
    " FOR NO KEY UPDATE SKIP LOCKED)"
    f" UPDATE {TABLE} SET token_data = %s::jsonb, expiry = %s,"
    " scopes = COALESCE(%s::jsonb, scopes),"
    " metadata = CASE WHEN %s THEN %s::jsonb ELSE metadata END,"
    " updated_at = CURRENT_TIMESTAMP FROM target WHERE id = target.target_id" + _RETURNING,
    privilege="UPDATE",
)
#: Record a permanent refresh failure (invalid_grant) in metadata, under the row lock.
RECORD_FAILURE = Statement(f"UPDATE {TABLE} SET metadata = %s::jsonb WHERE id = %s", "UPDATE")

#: Lock a user's row (if any) before an upsert, so a save and a refresh never interleave.
LOCK_FOR_SAVE = Statement(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE user_id = %s FOR NO KEY UPDATE",
    privilege="SELECT, UPDATE",
)
#: Insert or replace a grant; ON CONFLICT covers a concurrent first save of the same user.
UPSERT_GRANT = Statement(
    f"INSERT INTO {TABLE}"
    " (user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry)"
    " VALUES (%(user_id)s, %(robeing_id)s, %(token_data)s::jsonb, %(oauth_config)s::jsonb,"
    " %(scopes)s::jsonb, %(metadata)s::jsonb, %(expiry)s)"
    f" ON CONFLICT (user_id) DO UPDATE SET"
    f" robeing_id = COALESCE(EXCLUDED.robeing_id, {TABLE}.robeing_id),"
    " token_data = EXCLUDED.token_data,"
    f" oauth_config = COALESCE(EXCLUDED.oauth_config, {TABLE}.oauth_config),"
    f" scopes = COALESCE(EXCLUDED.scopes, {TABLE}.scopes),"
    " metadata = EXCLUDED.metadata, expiry = EXCLUDED.expiry,"
    " updated_at = CURRENT_TIMESTAMP" + _RETURNING,
    privilege="INSERT, UPDATE",
)

#: Does the table exist? (`create_table` leaves an existing one exactly as it is.)
TABLE_EXISTS = Statement(f"SELECT to_regclass('{TABLE}') IS NOT NULL", privilege="SELECT")
#: The production DDL, verbatim apart from IF NOT EXISTS (../shared/reference/auth-server.md).
CREATE_TABLE = Statement(
    f"""\
CREATE TABLE IF NOT EXISTS {TABLE} (
    id SERIAL PRIMARY KEY,
    user_id UUID UNIQUE NOT NULL,
    robeing_id VARCHAR(50),
    token_data JSONB NOT NULL,
    oauth_config JSONB,
    scopes JSONB,
    metadata JSONB,
    expiry TIMESTAMP,
    is_equipped BOOLEAN DEFAULT false,
    equipped_to VARCHAR(50),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)""",
    privilege="CREATE",
)
