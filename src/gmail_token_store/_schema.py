"""The gmail_token table exactly as production has it; the library never alters it."""

from __future__ import annotations

import psycopg

TABLE = "gmail_token"

#: The seed's DDL, verbatim apart from IF NOT EXISTS (see ../shared/reference/auth-server.md).
GMAIL_TOKEN_DDL = """\
CREATE TABLE IF NOT EXISTS gmail_token (
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
)"""


def create_table(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Create gmail_token if it does not exist; return True when it was created.

    An existing table is left exactly as it is, whatever its columns.
    """
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
        if exists and exists[0]:
            return False
        conn.execute(GMAIL_TOKEN_DDL)
        return True
