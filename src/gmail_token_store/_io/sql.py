"""Every SQL statement the library sends, in one place; the only file that takes row locks.

The core names the statements it needs (`Statement`); `SQL` gives each its text and the
table privilege it needs (named in a permission error). Reads select the JSONB columns as
text, cut one character past the longest a column may be (`_core.record.MAX_COLUMN_CHARS`:
a 150 MB column is never fetched whole, and is refused as too long), and decode them in
`_core.record` (psycopg's JSONB loader
costs a few microseconds per column on the hot path), the row version (`xmin`, which every
write changes whatever the layout of the row, JSON text included) and the database's own
clock (`statement_timestamp()`), so that freshness is judged by one clock for every host
without an extra round trip.

Nothing here is session-scoped (no SET, no advisory locks, no LISTEN): the timeouts are
transaction-local, so the statements are safe behind PgBouncer in transaction mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from .._core.effects import Effect, Execute, LockRow, Query, ReadRow, Statement
from .._core.record import MAX_COLUMN_CHARS

TABLE = "gmail_token"


#: The first server version with `pg_column_compression()` (PostgreSQL 14), which the
#: sieve's proof needs; see `Sql.text_for`.
COMPRESSION_INFO_SINCE = 140000


@dataclass(frozen=True, slots=True)
class Sql:
    """One statement's text and the table privilege it needs (named in permission errors).

    `before_14` is the text for a server older than PostgreSQL 14, when it differs: the
    listings' statements prove no row canonical there (`_CANONICAL_BEFORE_14`)."""

    text: str
    privilege: str
    before_14: str | None = None

    def text_for(self, server_version: int) -> str:
        """The text for a server of this version (`conn.info.server_version`)."""
        if self.before_14 is not None and server_version < COMPRESSION_INFO_SINCE:
            return self.before_14
        return self.text


def _json_text(column: str) -> str:
    return f"left({column}::text, {MAX_COLUMN_CHARS + 1})"


#: Row layout of every read (see `_core.record.parse_row`): eleven columns, then the extras
#: below. Timestamps are seconds since the epoch (a timestamp column's nominally, as UTC):
#: 'infinity' or a year past 9999 is a float the core refuses, never a value the driver
#: cannot load (which would stop every listing at that row).
COLUMNS = (
    f"id, user_id::text, robeing_id, {_json_text('token_data')}, {_json_text('oauth_config')},"
    f" {_json_text('scopes')}, {_json_text('metadata')}, extract(epoch from expiry)::float8,"
    " extract(epoch from updated_at)::float8, xmin::text, CASE WHEN false THEN expiry END"
)
#: Index of the always-NULL column typed like `expiry` in COLUMNS: its type, timestamp or
#: timestamptz, decides how an expiry is written back.
EXPIRY_COLUMN = 10
#: The database's clock as seconds since the epoch, appended to every read.
_DB_CLOCK = "extract(epoch from statement_timestamp())::float8"
#: ... and its wall clock in its own time zone, which `updated_at` is written in.
_DB_LOCAL_TIME = "extract(epoch from LOCALTIMESTAMP)::float8"

#: The hot path: one row by user id, and the database's clock.
READ_ROW = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE user_id = %(user_id)s", privilege="SELECT"
)
#: A row for a health check: also the database's local time (for idle detection).
CHECK_ROW = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK}, {_DB_LOCAL_TIME} FROM {TABLE} WHERE user_id = %(user_id)s",
    privilege="SELECT",
)
#: Whole rows after an id, at most `limit` (keyset pages of rows to rewrite: the reseal).
WHOLE_PAGE = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK}, {_DB_LOCAL_TIME} FROM {TABLE}"
    " WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",
    privilege="SELECT",
)
#: Some rows by id (read again after a compare-and-set missed them).
ROWS_BY_ID = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK}, {_DB_LOCAL_TIME} FROM {TABLE}"
    " WHERE id = ANY(%(ids)s::int[]) ORDER BY id",
    privilege="SELECT",
)

#: The token URIs the rows name, as the parse computes them (the sieve's policy check).
_TOKEN_URI = (
    "COALESCE(NULLIF(oauth_config->>'token_uri', ''), NULLIF(token_data->>'token_uri', ''),"
    " 'https://oauth2.googleapis.com/token')"
)
TOKEN_URIS = Sql(f"SELECT DISTINCT {_TOKEN_URI} FROM {TABLE} LIMIT %(limit)s", privilege="SELECT")


def _small(column: str, kind: str) -> str:
    # Under 512 bytes of uncompressed jsonb: it cannot nest 64 deep or print 64 KiB.
    return (
        f"pg_column_compression({column}) IS NULL AND pg_column_size({column}) < 512"
        f" AND jsonb_typeof({column}) = '{kind}'"
    )


def _text(value: str) -> str:
    return f"jsonb_typeof({value}) = 'string' AND {value} <> '\"\"'::jsonb"


#: A row in the production layout, exactly (see `_core.record.listed_record`): SQL extracts
#: its fields and the core reads them without decoding JSON. Any NULL makes it false.
_CANONICAL = (
    "COALESCE("
    + " AND ".join(
        (
            _small("token_data", "object"),
            "NOT token_data ? 'sealed'",
            _text("token_data->'access_token'"),
            _text("token_data->'refresh_token'"),
            "(token_data->'token_uri' IS NULL OR jsonb_typeof(token_data->'token_uri') = 'string')",
            "oauth_config IS NOT NULL",
            _small("oauth_config", "object"),
            _text("oauth_config->'client_id'"),
            _text("oauth_config->'client_secret'"),
            "(oauth_config->'token_uri' IS NULL"
            " OR jsonb_typeof(oauth_config->'token_uri') = 'string')",
            "scopes IS NOT NULL",
            _small("scopes", "array"),
            "NOT jsonb_path_exists(scopes, '$[*] ? (@.type() != \"string\")')",
            f"(metadata IS NULL OR ({_small('metadata', 'object')}))",
            "expiry >= '1900-01-01' AND expiry < '10000-01-01'",
            "(updated_at IS NULL OR (updated_at >= '1900-01-01' AND updated_at < '10000-01-01'))",
        )
    )
    + ", false)"
)
#: Before PostgreSQL 14 nothing tells whether a JSONB value is stored compressed (its
#: size on disk then says nothing of its depth or length): no row is proved canonical, so
#: every row is decoded and classified by the core, as a sieve must when in doubt.
_CANONICAL_BEFORE_14 = "false"
#: Of a canonical row, whether it is of no interest (see `_core.listing`): its state is ok,
#: it is not due within %(margin)s s nor idle for %(idle)s s, its token URI is one the
#: policy allows.
_OF_NO_INTEREST = (
    "COALESCE("
    + " AND ".join(
        (
            f"{_TOKEN_URI} = ANY(%(token_uris)s::text[])",
            "(metadata IS NULL OR NOT metadata ? 'refresh_failure')",
            "extract(epoch FROM expiry) >= extract(epoch FROM statement_timestamp()) + %(margin)s",
            "(updated_at IS NULL OR"
            " extract(epoch FROM updated_at) >= extract(epoch FROM LOCALTIMESTAMP) - %(idle)s)",
        )
    )
    + ", false)"
)


def _unless_canonical(value: str) -> str:
    return f"CASE WHEN canonical THEN NULL ELSE {value} END"


def _if_canonical(value: str) -> str:
    return f"CASE WHEN canonical THEN {value} END"


#: A listed row: every read's 13 columns (token_data, oauth_config and scopes only for a
#: row that is not canonical), then `canonical` and the fields SQL extracted from it.
_LISTED = ", ".join(
    (
        "id, user_id::text, robeing_id",
        _unless_canonical(_json_text("token_data")),
        _unless_canonical(_json_text("oauth_config")),
        _unless_canonical(_json_text("scopes")),
        _json_text("metadata"),
        "extract(epoch from expiry)::float8, extract(epoch from updated_at)::float8",
        "row_version, CASE WHEN false THEN expiry END",
        _DB_CLOCK,
        _DB_LOCAL_TIME,
        "canonical",
        _if_canonical("token_data->>'access_token'"),
        _if_canonical("token_data->>'refresh_token'"),
        _if_canonical("oauth_config->>'client_id'"),
        _if_canonical("oauth_config->>'client_secret'"),
        _if_canonical(_TOKEN_URI),
        _if_canonical("ARRAY(SELECT jsonb_array_elements_text(scopes))"),
    )
)


#: The rows of a page, each with its version and whether it is canonical (computed once
#: per row: OFFSET 0 keeps the planner from copying the expression into every use).
def _page(canonical: str) -> str:
    return (
        f"SELECT {_LISTED} FROM (SELECT t.*, t.xmin::text AS row_version,"
        f" {canonical} AS canonical FROM {TABLE} t"
        " WHERE t.id > %(after)s ORDER BY t.id LIMIT %(limit)s OFFSET 0) page ORDER BY id"
    )


#: A page of rows after an id (keyset pagination: nothing stays open between pages).
PAGE_ROWS = Sql(_page(_CANONICAL), "SELECT", _page(_CANONICAL_BEFORE_14))


def _sieved_page(canonical: str) -> str:
    return (
        "WITH page AS MATERIALIZED (SELECT id, expiry, updated_at, canonical,"
        " canonical AND fine AS dull FROM (SELECT t.id, t.expiry, t.updated_at,"
        f" {canonical} AS canonical, {_OF_NO_INTEREST} AS fine FROM {TABLE} t"
        " WHERE t.id > %(after)s ORDER BY t.id LIMIT %(limit)s OFFSET 0) p)"
        f" SELECT {_LISTED}, NULL::int8, NULL::float8, NULL::float8, NULL::int4 FROM"
        f" (SELECT t.*, t.xmin::text AS row_version, page.canonical FROM {TABLE} t"
        " JOIN page ON page.id = t.id WHERE NOT page.dull OFFSET 0) listed"
        " UNION ALL SELECT "
        + "NULL, " * 11
        + f"{_DB_CLOCK}, {_DB_LOCAL_TIME}, "
        + "NULL, " * 7
        + "count(*) FILTER (WHERE dull),"
        " min(extract(epoch FROM expiry)::float8) FILTER (WHERE dull),"
        " max(extract(epoch FROM updated_at)::float8) FILTER (WHERE dull), max(id) FROM page"
        " ORDER BY 1 NULLS LAST"
    )


#: A page of `limit` rows after an id, sieved: the rows of interest as listed (read again
#: by id in the same snapshot: only each row's id, times and verdicts are kept aside, not
#: the row), then four NULLs; and one last row (id NULL) counting the others: the clocks,
#: then how many, their earliest expiry, their newest write, and the page's last id.
SIEVED_PAGE = Sql(_sieved_page(_CANONICAL), "SELECT", _sieved_page(_CANONICAL_BEFORE_14))

_LOCK_ROW = f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE user_id = {{}} FOR NO KEY UPDATE"
#: Privileges a row lock needs, by its purpose (`LockRow.purpose`): `FOR NO KEY UPDATE`
#: needs UPDATE; the refresh writes back, a save may insert.
LOCK_PRIVILEGE = {"refresh": "SELECT, UPDATE", "save": "SELECT, UPDATE"}


def lock_row(user_id: str, wait_ms: int | None, idle_timeout_ms: int) -> sql.Composed:
    """Transaction-local timeouts and the row lock, sent as one simple query after BEGIN
    (which the store adds on an autocommit connection; psycopg begins on any other).

    `wait_ms=None` only tries the lock (SKIP LOCKED: no row comes back if another
    transaction holds it). Nothing here is a bound parameter, so nothing secret may go in:
    the user id is a canonical UUID (`_core.errors.parse_user_id`) quoted by psycopg, the
    rest are ints.
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
    "token_data = %(token_data)s::jsonb, expiry = %(expiry)s,"
    " oauth_config = CASE WHEN %(set_oauth_config)s THEN %(oauth_config)s::jsonb"
    " ELSE oauth_config END,"
    " scopes = COALESCE(%(scopes)s::jsonb, scopes),"
    " metadata = CASE WHEN %(set_metadata)s THEN %(metadata)s::jsonb ELSE metadata END,"
    " updated_at = CURRENT_TIMESTAMP"
)
#: Write a refreshed grant into a row this transaction has locked.
WRITE_GRANT = Sql(
    f"UPDATE {TABLE} SET {_SET_GRANT} WHERE id = %(row_id)s" + _RETURNING, privilege="UPDATE"
)
#: Write a grant without holding the lock, only if the row is still the version we read
#: (a compare-and-set: `xmin` changes with every write, whatever the row's layout). A row
#: locked by another transaction is skipped, not waited for: the caller tries again later.
WRITE_GRANT_IF_VERSION = Sql(
    f"WITH target AS (SELECT id AS target_id FROM {TABLE}"
    " WHERE id = %(row_id)s AND xmin = %(version)s::xid FOR NO KEY UPDATE SKIP LOCKED)"
    f" UPDATE {TABLE} SET {_SET_GRANT} FROM target WHERE id = target.target_id" + _RETURNING,
    privilege="UPDATE",
)
#: Record a permanent refresh failure (invalid_grant) in metadata, under the row lock.
RECORD_FAILURE = Sql(
    f"UPDATE {TABLE} SET metadata = %(metadata)s::jsonb WHERE id = %(row_id)s", "UPDATE"
)
#: Insert or replace a grant; ON CONFLICT covers a concurrent first save of the same user.
UPSERT_GRANT = Sql(
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
#: Insert a user's first grant, or nothing if a row appeared since we looked (a consent
#: then checks its account against that row, under its lock, and writes with UPSERT_GRANT).
INSERT_GRANT = Sql(
    f"INSERT INTO {TABLE}"
    " (user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry)"
    " VALUES (%(user_id)s, %(robeing_id)s, %(token_data)s::jsonb, %(oauth_config)s::jsonb,"
    " %(scopes)s::jsonb, %(metadata)s::jsonb, %(expiry)s)"
    " ON CONFLICT (user_id) DO NOTHING" + _RETURNING,
    privilege="INSERT",
)

#: Rows a Google security event (RISC) may be about: by the account a consent recorded, by
#: the refresh token's first 16 characters, or its double SHA-512 in base64 (the core
#: checks each row again; these only narrow the scan, with no index to add).
FIND_BY_ACCOUNT = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE}"
    " WHERE metadata->>'google_account_id' = %(account_id)s",
    privilege="SELECT",
)
_REFRESH_TOKEN = "COALESCE(token_data->>'refresh_token', '')"
_SEALED_IDS = "token_data->'sealed'->'refresh_token_ids'"
FIND_BY_TOKEN_PREFIX = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE left({_REFRESH_TOKEN}, 16) = %(identifier)s"
    f" OR {_SEALED_IDS}->>'prefix_sha256' = %(sealed)s",
    privilege="SELECT",
)
FIND_BY_TOKEN_HASH = Sql(
    f"SELECT {COLUMNS}, {_DB_CLOCK} FROM {TABLE} WHERE translate(encode(sha512(sha512("
    f"convert_to({_REFRESH_TOKEN}, 'UTF8'))), 'base64'), E'\\n', '') = %(identifier)s"
    f" OR {_SEALED_IDS}->>'hash_base64_sha512_sha512' = %(sealed)s",
    privilege="SELECT",
)

#: Record the notice about to be sent, only if the row is still the version that was read:
#: of two runs at once, one claims it.
CLAIM_NOTICE = Sql(
    f"UPDATE {TABLE} SET metadata = %(metadata)s::jsonb"
    " WHERE id = %(row_id)s AND xmin = %(version)s::xid RETURNING xmin::text",
    privilege="UPDATE",
)
#: Mark the notice claimed with this message id as sent (or failed), whatever else changed.
MARK_NOTICE = Sql(
    f"UPDATE {TABLE} SET metadata = jsonb_set(metadata, '{{notice,status}}', to_jsonb("
    "%(status)s::text)) WHERE id = %(row_id)s AND metadata->'notice'->>'id' = %(message_id)s",
    privilege="UPDATE",
)

#: Rewrite rows' secret-holding columns, each only if it is still the version that was read
#: and nobody holds its lock (skipped, not waited for: the caller reads it again). Nothing
#: else changes, `updated_at` included: the grant is the same.
RESEAL_ROWS = Sql(
    "WITH wanted AS (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS w(id int,"
    " version text, token_data jsonb, set_oauth_config boolean, oauth_config jsonb)),"
    f" target AS (SELECT t.id FROM {TABLE} t JOIN wanted w ON t.id = w.id"
    " AND t.xmin = w.version::xid FOR NO KEY UPDATE OF t SKIP LOCKED)"
    f" UPDATE {TABLE} t SET token_data = w.token_data, oauth_config = CASE WHEN"
    " w.set_oauth_config THEN w.oauth_config ELSE t.oauth_config END"
    " FROM wanted w, target WHERE t.id = w.id AND t.id = target.id RETURNING t.id",
    privilege="UPDATE",
)

#: Does the table exist? (`create_table` leaves an existing one exactly as it is.)
TABLE_EXISTS = Sql(f"SELECT to_regclass('{TABLE}') IS NOT NULL", privilege="SELECT")
#: The production DDL, verbatim apart from IF NOT EXISTS (../shared/reference/auth-server.md).
CREATE_TABLE = Sql(
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


#: The SQL of every statement the core may name (a test checks none is missing).
SQL: dict[Statement, Sql] = {
    Statement.CHECK_ROW: CHECK_ROW,
    Statement.READ_ROW: READ_ROW,
    Statement.WRITE_GRANT: WRITE_GRANT,
    Statement.WRITE_GRANT_IF_VERSION: WRITE_GRANT_IF_VERSION,
    Statement.RECORD_FAILURE: RECORD_FAILURE,
    Statement.UPSERT_GRANT: UPSERT_GRANT,
    Statement.INSERT_GRANT: INSERT_GRANT,
    Statement.TABLE_EXISTS: TABLE_EXISTS,
    Statement.CREATE_TABLE: CREATE_TABLE,
    Statement.FIND_BY_ACCOUNT: FIND_BY_ACCOUNT,
    Statement.FIND_BY_TOKEN_PREFIX: FIND_BY_TOKEN_PREFIX,
    Statement.FIND_BY_TOKEN_HASH: FIND_BY_TOKEN_HASH,
    Statement.CLAIM_NOTICE: CLAIM_NOTICE,
    Statement.MARK_NOTICE: MARK_NOTICE,
    Statement.PAGE_ROWS: PAGE_ROWS,
    Statement.ROWS_BY_ID: ROWS_BY_ID,
    Statement.WHOLE_PAGE: WHOLE_PAGE,
    Statement.RESEAL_ROWS: RESEAL_ROWS,
    Statement.TOKEN_URIS: TOKEN_URIS,
    Statement.SIEVED_PAGE: SIEVED_PAGE,
}


def privilege(effect: Effect) -> str | None:
    """The table privilege `effect` needs, named when the role lacks it (None: a commit, or
    an effect that is not a statement)."""
    match effect:
        case ReadRow():
            return READ_ROW.privilege
        case Query() | Execute():
            return SQL[effect.statement].privilege
        case LockRow():
            return LOCK_PRIVILEGE[effect.purpose]
        case _:
            return None


_TIMESTAMPTZ_OID = 1184


def timestamptz_column(description: Sequence[Any] | None, index: int) -> bool:
    """Is column `index` of a cursor's description a timestamptz?"""
    return (
        description is not None
        and len(description) > index
        and (description[index].type_code == _TIMESTAMPTZ_OID)
    )
