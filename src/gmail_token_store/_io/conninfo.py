"""The DSN a store connects with: checked once, the store's TCP defaults merged in.

The password is kept apart, so that an error message can be scrubbed of it and a repr
never shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
import psycopg.conninfo

from .._core.errors import ConfigurationError

#: TCP settings for the store's connections unless the DSN sets them: a connection whose
#: peer vanished (a blackholed network, a dead host) is noticed in about 10-15 s instead of
#: the kernel's two hours: keepalive probes after 5 s idle, every 2 s, 3 unanswered; sent
#: data unacknowledged for 10 s ends the connection (tcp_user_timeout, milliseconds).
TCP_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


@dataclass(frozen=True, slots=True)
class Conninfo:
    """A DSN with the store's TCP defaults merged in; the password kept apart for redaction."""

    dsn: str = field(repr=False)
    password: str | None = field(repr=False)


def conninfo_from(conninfo: object) -> Conninfo:
    """Check a DSN/URL and add TCP_DEFAULTS for what it does not set itself.

    Raises:
        ConfigurationError: not a string, empty, or unparseable (never quoting it: it may
            contain a password).
    """
    if not isinstance(conninfo, str) or not conninfo.strip():
        raise ConfigurationError(
            "conninfo must be a non-empty libpq URL/DSN string or a psycopg_pool pool"
        )
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        params = None
    if params is None:
        # libpq's parse errors quote the DSN, password included: never chained, nor made the
        # context (raised outside the except).
        raise ConfigurationError(
            "the database DSN cannot be parsed (not shown: it may contain a password)"
        )
    merged = {**TCP_DEFAULTS, **{key: value for key, value in params.items() if value is not None}}
    password = params.get("password")
    return Conninfo(
        dsn=psycopg.conninfo.make_conninfo("", **merged),
        password=str(password) if password else None,
    )
