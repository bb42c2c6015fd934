"""The bare SQL of what each command does, for `scale.py`: what a DBA would run in psql.

Every statement classifies the rows the way `_core.status.classify` does, in one place
(`CLASSIFIED`): broken (neither token, a token URI that is neither Google's nor loopback,
a refresh token without a client), then reauth-required (no refresh token, or a
`metadata.refresh_failure` recorded for the stored refresh token, matched by its
fingerprint), then idle (`updated_at` more than 150 days ago by the server's local
clock), expired, refresh-due (within the 300 s refresh margin), ok. Expiries are naive UTC
and compared with the database's clock, as the store does. The SQL reads the production
layout (JSONB objects); the library's tolerance of older writers' layouts (JSON text
inside JSONB, `token` for `access_token`, scopes as a string) and its limits on hostile
rows are not repeated here: the benchmark's tables hold none of them, and `scale.py`
checks at the small sizes that both sides give the same answer row by row.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from psycopg.rows import dict_row

#: Seconds before expiry from which a token is due (`TokenStore(refresh_margin=...)`).
REFRESH_MARGIN = 300
#: A grant not refreshed for this many days is idle (`_core.status.IDLE_AFTER`).
IDLE_DAYS = 150
#: refresh-all's default `--idle-days`.
KEEPALIVE_IDLE_DAYS = 30
ATTENTION = "('reauth-required', 'broken', 'idle')"
#: Where a row may send its refresh token: Google's token hosts over https, loopback (the
#: benchmark's fake endpoint, allowed as GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI=1 does).
TOKEN_URIS = (
    "ARRAY["
    + ", ".join(
        f"'{scheme}://{host}{end}'"
        for scheme, hosts in (
            ("https", ("oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com")),
            ("http", ("127.0.0.1", "localhost", "[::1]")),
            ("https", ("127.0.0.1", "localhost", "[::1]")),
        )
        for host in hosts
        for end in ("/%", ":%")
    )
    + "]"
)

# Each step is a subquery fenced by OFFSET 0, so that every row's fields and state are
# computed once: flattened, the state's CASE would be repeated (JSON lookups and all) in
# every expression that uses it, seven times over in `METRICS`. The state compares
# timestamps; seconds are only computed where they are printed.
CLASSIFIED = f"""\
WITH states AS (SELECT c.*,
    coalesce(c.broken_because, c.reauth_because) AS problem,
    CASE WHEN c.broken_because IS NOT NULL THEN 'broken'
         WHEN c.reauth_because IS NOT NULL THEN 'reauth-required'
         WHEN c.updated_at < LOCALTIMESTAMP - interval '{IDLE_DAYS} days' THEN 'idle'
         WHEN c.valid_until IS NULL OR c.valid_until <= c.utc_now THEN 'expired'
         WHEN c.valid_until < c.utc_now + interval '{REFRESH_MARGIN} seconds' THEN 'refresh-due'
         ELSE 'ok' END AS state
FROM (SELECT j.*,
    CASE WHEN j.broken_because IS NULL THEN
        CASE WHEN j.refresh_token IS NULL THEN 'no refresh token is stored'
             WHEN j.failed THEN 'the token endpoint answered '
                 || coalesce(j.failure->>'error', 'unknown')
                 || coalesce(' (' || nullif(j.failure->>'description', '') || ')', '')
                 || ' at ' || coalesce(j.failure->>'at', '')
        END
    END AS reauth_because
FROM (SELECT f.*,
    CASE WHEN f.access_token IS NOT NULL THEN f.expiry END AS valid_until,
    CASE WHEN f.refresh_token IS NOT NULL AND jsonb_typeof(f.failure) = 'object'
         THEN f.failure->>'refresh_token_fingerprint' = 'sha256:' || left(encode(
             sha256(convert_to(f.refresh_token, 'UTF8')), 'hex'), 16)
         ELSE false END AS failed,
    CASE
        WHEN f.access_token IS NULL AND f.refresh_token IS NULL
            THEN 'token_data holds neither an access token nor a refresh token'
        WHEN NOT f.token_uri LIKE ANY ({TOKEN_URIS})
            THEN 'token_uri host is not allowed'
        WHEN f.refresh_token IS NOT NULL AND NOT coalesce(f.client_in_row, false)
            THEN 'no OAuth client id/secret'
    END AS broken_because
FROM (SELECT t.id, t.user_id, t.robeing_id, t.metadata, t.scopes, t.expiry, t.updated_at,
    t.xmin, statement_timestamp() AT TIME ZONE 'UTC' AS utc_now,
    nullif(coalesce(t.token_data->>'access_token', t.token_data->>'token'), '')
        AS access_token,
    nullif(t.token_data->>'refresh_token', '') AS refresh_token,
    coalesce(t.oauth_config->>'client_id', t.token_data->>'client_id') <> ''
        AND coalesce(t.oauth_config->>'client_secret', t.token_data->>'client_secret') <> ''
        AS client_in_row,
    coalesce(t.oauth_config->>'token_uri', t.token_data->>'token_uri',
             'https://oauth2.googleapis.com/token') AS token_uri,
    t.metadata->'refresh_failure' AS failure,
    left(t.token_data->'sealed'->>'kid', 64) AS key_id,
    CASE WHEN jsonb_typeof(t.metadata->'email') = 'string'
         THEN nullif(t.metadata->>'email', '') END AS email,
    CASE WHEN t.metadata->'account_verified' = 'true'::jsonb
              AND jsonb_typeof(t.metadata->'google_account_id') = 'string'
         THEN nullif(t.metadata->>'google_account_id', '') END AS google_account_id
FROM gmail_token t OFFSET 0) f OFFSET 0) j OFFSET 0) c OFFSET 0)
"""
#: Seconds until the access token expires (NULL: no token or no expiry), and since the
#: last refresh, by the database's clocks: as `list` prints them.
_LEFT = "trunc(extract(epoch FROM s.valid_until) - extract(epoch FROM statement_timestamp()))"
_SINCE = "trunc(extract(epoch FROM LOCALTIMESTAMP) - extract(epoch FROM s.updated_at))"

_ISO = "'YYYY-MM-DD\"T\"HH24:MI:SS'"

#: `list --json`: the same 25 keys per row, in the same order, oldest row first.
LIST_JSON = f"""\
COPY ({CLASSIFIED}SELECT json_build_object(
    'status', 'found',
    'user_id', s.user_id,
    'email', s.email,
    'has_token', s.access_token IS NOT NULL OR s.refresh_token IS NOT NULL,
    'has_access_token', s.access_token IS NOT NULL,
    'has_refresh_token', s.refresh_token IS NOT NULL,
    'has_oauth_config', coalesce(s.client_in_row, false),
    'is_expired', s.valid_until IS NULL OR s.valid_until <= s.utc_now,
    'remaining_seconds', CASE WHEN s.valid_until IS NOT NULL
        THEN greatest({_LEFT}, 0)::bigint END,
    'needs_refresh', s.valid_until IS NULL
        OR s.valid_until < s.utc_now + interval '{REFRESH_MARGIN} seconds',
    'state', s.state,
    'needs_reauth', s.reauth_because IS NOT NULL,
    'needs_attention', s.state IN {ATTENTION},
    'problem', s.problem,
    'last_error', CASE WHEN s.failed THEN json_build_object(
        'error', coalesce(s.failure->>'error', 'unknown'),
        'description', coalesce(s.failure->>'description', ''),
        'at', coalesce(s.failure->>'at', ''),
        'source', coalesce(s.failure->>'source', 'token_endpoint')) END,
    'robeing_id', s.robeing_id,
    'expiry', to_char(s.expiry, {_ISO}),
    'last_refreshed', to_char(s.updated_at, {_ISO}),
    'seconds_since_refresh', {_SINCE}::bigint,
    'scopes', s.scopes,
    'version', s.xmin::text,
    'account_verified', s.google_account_id IS NOT NULL,
    'google_account_id', s.google_account_id,
    'consented_at', CASE WHEN s.metadata->>'consented_at' ~ '^\\d{{4}}-\\d\\d-\\d\\dT'
        THEN to_char((s.metadata->>'consented_at')::timestamptz AT TIME ZONE 'UTC', {_ISO})
        END,
    'key_id', s.key_id)
FROM states s ORDER BY s.id) TO STDOUT"""

#: `list --needs-attention`: the table's columns and the problem of the rows that need a
#: person; the summary's total comes from the count below.
NEEDS_ATTENTION = f"""\
{CLASSIFIED}SELECT s.user_id, coalesce(s.email, '-') AS email,
       coalesce(s.robeing_id, '-') AS robeing, s.state,
       CASE WHEN s.valid_until IS NULL THEN '-'
            WHEN s.valid_until <= s.utc_now THEN 'expired'
            WHEN {_LEFT} < 3600 THEN ({_LEFT}::bigint / 60) || 'm'
            WHEN {_LEFT} < 86400 THEN ({_LEFT}::bigint / 3600) || 'h'
                 || lpad(({_LEFT}::bigint % 3600 / 60)::text, 2, '0') || 'm'
            ELSE ({_LEFT}::bigint / 86400) || 'd' END AS left,
       coalesce(to_char(s.updated_at, 'YYYY-MM-DD HH24:MI'), '-') AS last_refresh,
       CASE WHEN s.google_account_id IS NOT NULL THEN 'verified' ELSE 'unverified' END
           AS account,
       s.problem
FROM states s WHERE s.state IN {ATTENTION} ORDER BY s.id"""

#: The summary lines' total number of grants.
COUNT = "SELECT count(*) AS grants FROM gmail_token"

#: `metrics`: the gauges of the exposition, one count per state.
METRICS = f"""\
{CLASSIFIED}SELECT count(*) FILTER (WHERE s.state = 'ok') AS "ok",
       count(*) FILTER (WHERE s.state = 'refresh-due') AS "refresh-due",
       count(*) FILTER (WHERE s.state = 'expired') AS "expired",
       count(*) FILTER (WHERE s.state = 'reauth-required') AS "reauth-required",
       count(*) FILTER (WHERE s.state = 'broken') AS "broken",
       count(*) FILTER (WHERE s.state = 'idle') AS "idle",
       count(*) FILTER (WHERE s.state IN {ATTENTION}) AS needs_attention,
       greatest(trunc(extract(epoch FROM min(s.valid_until))
           - extract(epoch FROM statement_timestamp())), 0) AS earliest_expiry_seconds,
       trunc(extract(epoch FROM LOCALTIMESTAMP) - extract(epoch FROM max(s.updated_at)))
           AS newest_refresh_age_seconds
FROM states s"""

#: `refresh-all`: the rows it acts on (refreshes the due and idle ones, reports the ones
#: that need a person), with the counts of its summary from `COUNT`.
REFRESH_ALL = f"""\
{CLASSIFIED}SELECT s.user_id, s.email, s.state, s.problem FROM states s
WHERE s.state IN ('broken', 'reauth-required')
   OR s.valid_until IS NULL OR s.valid_until < s.utc_now + interval '{REFRESH_MARGIN} seconds'
   OR s.updated_at < LOCALTIMESTAMP - interval '{KEEPALIVE_IDLE_DAYS} days'
ORDER BY s.id"""


# --- the check: both sides give the same answer ------------------------------------------

#: Fields that count seconds from now: they may differ by the time between the two reads.
_CLOCKED = {"remaining_seconds", "seconds_since_refresh"}
#: ... and those that change when a token crosses its expiry or its refresh margin then.
_EDGE = {"state", "is_expired", "needs_refresh"}
#: The states a row leaves as time passes (ok -> refresh-due -> expired).
_MOVING = {"ok", "refresh-due", "expired"}
#: Rows whose token crosses its expiry or its refresh margin within `slack` of now.
_CROSSING = f"""\
SELECT count(*) AS crossing FROM gmail_token t, (SELECT now() AT TIME ZONE 'UTC' AS utc_now,
    make_interval(secs => %(slack)s) AS slack, interval '{REFRESH_MARGIN} s' AS margin) c
WHERE t.expiry BETWEEN c.utc_now - c.slack AND c.utc_now + c.slack
   OR t.expiry BETWEEN c.utc_now + c.margin - c.slack AND c.utc_now + c.margin + c.slack"""
_UUID_AT_START = re.compile(
    rb"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b", re.M
)
_GAUGE = re.compile(rb'^gmail_token_(\w+?)(?:\{state="([\w-]+)"\})? (\S+)$', re.M)
_KEEPALIVE = re.compile(rb"refresh-all: (\d+) grants, (\d+) due")


def _close(one: Any, other: Any, slack: float) -> bool:
    if isinstance(one, int | float) and isinstance(other, int | float):
        return abs(one - other) <= slack
    return bool(one == other)


def _rows(dsn: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(statement, params or None).fetchall()


def _near_edge(rows: tuple[dict[str, Any], dict[str, Any]], slack: float) -> bool:
    """Did either read find the token within `slack` of its expiry or refresh margin?"""
    return any(
        isinstance(left, int) and (0 < left <= slack or abs(left - REFRESH_MARGIN) <= slack)
        for left in (row.get("remaining_seconds") for row in rows)
    )


def _listing(output: bytes, dsn: str, slack: float) -> str:
    try:
        command = {row["user_id"]: row for row in json.loads(output)}
    except (ValueError, TypeError, KeyError):
        return "cannot compare: the command's output is not a JSON list of rows"
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(LIST_JSON) as copy,
    ):
        bare = [json.loads(record[0]) for record in copy.rows()]
    differ = [
        (row["user_id"], key)
        for row in bare
        for key in sorted(set(row) | set(command.get(row["user_id"], {})))
        if not (key in _EDGE and _near_edge((row, command.get(row["user_id"], {})), slack))
        and not _close(
            row.get(key), command.get(row["user_id"], {}).get(key), slack if key in _CLOCKED else 0
        )
    ]
    if len(command) != len(bare) or differ:
        first = f"; first: {differ[0][1]} of {differ[0][0]}" if differ else ""
        return f"DIFFER: {len(command)} rows against {len(bare)}, {len(differ)} fields{first}"
    edge = sum(_near_edge((row, command.get(row["user_id"], {})), slack) for row in bare)
    return (
        f"yes: {len(bare):,} rows, all 25 fields (seconds from now within {slack:.0f} s, the "
        f"read's distance; {edge:,} tokens within that of an edge: their state not compared)"
    )


def _attention(output: bytes, dsn: str, slack: float) -> str:  # noqa: ARG001
    command = {match.decode() for match in _UUID_AT_START.findall(output)}
    bare = {str(row["user_id"]) for row in _rows(dsn, NEEDS_ATTENTION)}
    if command != bare:
        return f"DIFFER: {len(command ^ bare)} user ids listed by one side only"
    return f"yes: the same {len(bare):,} user ids"


def _metrics(output: bytes, dsn: str, slack: float) -> str:
    command: dict[str, float] = {}
    for name, state, value in _GAUGE.findall(output):
        command[(state or name).decode()] = float(value)
    bare = {key: float(value) for key, value in _rows(dsn, METRICS)[0].items()}
    crossing = _rows(dsn, _CROSSING, slack=slack)[0]["crossing"]
    differ = sorted(
        key
        for key in bare
        if not _close(
            bare[key],
            command.get(key),
            slack if key.endswith("_seconds") else crossing if key in _MOVING else 0,
        )
    )
    if differ:
        return f"DIFFER: {', '.join(differ)}"
    counts = ", ".join(f"{key} {value:g}" for key, value in bare.items())
    return f"yes: {counts} ({crossing} tokens near an edge: ok/due/expired within that)"


def _keepalive(output: bytes, dsn: str, slack: float) -> str:  # noqa: ARG001
    summary = _KEEPALIVE.search(output)
    if summary is None:
        return "cannot compare: no 'refresh-all: N grants, M due' line"
    grants, due = (int(value) for value in summary.groups())
    rows = _rows(dsn, REFRESH_ALL)
    bare_due = sum(row["state"] not in ("broken", "reauth-required") for row in rows)
    bare_grants = _rows(dsn, COUNT)[0]["grants"]
    if (grants, due) != (bare_grants, bare_due):
        return f"DIFFER: {grants} grants, {due} due against {bare_grants}, {bare_due}"
    return f"yes: {grants:,} grants, {due:,} due"


def same_output(name: str, output: bytes, dsn: str, *, slack: float) -> str:
    """Does the command's output (of the command named `name`) say what the bare SQL says?

    Counts of seconds from now may differ by `slack`: the command's run and the check's
    query read the table that far apart."""
    check = {
        "list-json": _listing,
        "needs-attention": _attention,
        "metrics": _metrics,
        "refresh-all": _keepalive,
    }[name]
    return check(output, dsn, slack)
