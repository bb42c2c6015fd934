"""What the library writes into a row: strict, whatever the row held before.

Objects, never JSON text; naive-UTC expiries; the access token under the key it was read
from; every key and column we do not own left alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .record import (
    ACCOUNT_KEYS,
    FAILURE_KEY,
    GOOGLE_TOKEN_URI,
    MAX_COLUMN_CHARS,
    TokenRecord,
    fingerprint,
    utc_naive,
)


class UnwritableError(ValueError):
    """A value cannot be written as JSON: nested too deeply, too long, or holding text
    PostgreSQL refuses. The message never quotes the value."""


# NUL, which PostgreSQL's text and jsonb refuse, and lone UTF-16 surrogates, which cannot
# be encoded (json.dumps writes them as escapes the server then rejects).
_REFUSED_TEXT = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str | None) -> bool:
    """Does `text` hold a character PostgreSQL cannot store (NUL, a lone surrogate)?"""
    return text is not None and _REFUSED_TEXT.search(text) is not None


def to_json(value: Any) -> str:
    """Encode a column value as JSON text for a `%s::jsonb` parameter.

    Refused before any write, so that the server's error (which quotes the JSON, secrets
    included) never happens: text PostgreSQL cannot store, and JSON longer than a read
    accepts (a row we wrote must stay readable).
    """
    if _holds_unstorable_text(value):
        raise UnwritableError("a value holds a NUL or a lone surrogate, which PostgreSQL refuses")
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (RecursionError, ValueError):
        raise UnwritableError("a JSON column is nested too deeply to be written back") from None
    if len(text) > MAX_COLUMN_CHARS:
        raise UnwritableError(f"a JSON column would hold more than {MAX_COLUMN_CHARS:,} characters")
    return text


def _holds_unstorable_text(value: Any) -> bool:
    """Does any key or string inside `value` hold text PostgreSQL refuses? (Iterative: the
    value may be nested deeper than the interpreter's recursion limit.)"""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _REFUSED_TEXT.search(item):
                return True
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def optional_json(value: Any) -> str | None:
    return None if value is None else to_json(value)


def expiry_param(expiry: datetime, column_has_time_zone: bool) -> datetime:
    """The expiry to bind for the row's `expiry` column.

    A naive value bound to a timestamptz column would be read in the session's time zone,
    so a timestamptz column gets an aware UTC value and a timestamp column a naive one.
    """
    return expiry.replace(tzinfo=UTC) if column_has_time_zone else expiry


def refreshed_token_data(
    record: TokenRecord, access_token: str, refresh_token: str | None
) -> dict[str, Any]:
    """Return token_data with the new access token under the key it was read from."""
    data = dict(record.token_data)
    data[record.access_token_key] = access_token
    if refresh_token:
        data["refresh_token"] = refresh_token
    return data


def metadata_with_failure(
    record: TokenRecord, error: str, description: str, at: datetime, *, source: str | None = None
) -> dict[str, Any] | None:
    """Return metadata recording a permanent failure, or None when metadata is unreadable.

    `source` "risc" says Google reported it (a security event), not the token endpoint.
    """
    if record.metadata is None or not record.refresh_token:
        return None
    data = dict(record.metadata)
    data[FAILURE_KEY] = {
        "error": error,
        "description": description,
        "at": at.isoformat(timespec="seconds") + "Z",
        "refresh_token_fingerprint": fingerprint(record.refresh_token),
    }
    if source is not None:
        data[FAILURE_KEY]["source"] = source
    return data


def metadata_without_failure(record: TokenRecord) -> dict[str, Any] | None:
    """Return metadata without a recorded failure, or None when there is nothing to remove."""
    if not record.metadata or FAILURE_KEY not in record.metadata:
        return None
    return {key: value for key, value in record.metadata.items() if key != FAILURE_KEY}


@dataclass(frozen=True, slots=True)
class GrantColumns:
    """The column values `save()` writes for a grant, in the production layout."""

    token_data: dict[str, Any] = field(repr=False)
    oauth_config: dict[str, Any] | None = field(repr=False)
    scopes: list[str] | None
    expiry: datetime | None
    metadata: dict[str, Any]


def grant_columns(
    *,
    existing: TokenRecord | None,
    access_token: str | None,
    refresh_token: str | None,
    client_id: str | None,
    client_secret: str | None,
    token_uri: str | None,
    scopes: Sequence[str] | None,
    expiry: datetime | None,
    email: str | None,
    metadata: Mapping[str, Any] | None,
) -> GrantColumns:
    """Merge a new grant into an existing row's values (or start a new row).

    token_data keeps keys we do not own but drops the legacy `token` key so that only one
    access token is stored; metadata keeps every key, takes `metadata` and `email` on top
    (a key set to None is removed), and loses any recorded refresh failure and the account
    a verified consent recorded, unless `metadata` says them again: a new grant's account
    is only what its writer says (a consent verifies it; an import cannot).
    """
    token_data = dict(existing.token_data) if existing else {}
    token_data.pop("token", None)
    token_data["access_token"] = access_token
    if refresh_token:
        token_data["refresh_token"] = refresh_token
    token_data.setdefault("token_type", "Bearer")

    oauth_config: dict[str, Any] | None = None
    if client_id and client_secret:
        oauth_config = {
            "client_id": client_id,
            "client_secret": client_secret,
            "token_uri": token_uri or GOOGLE_TOKEN_URI,
        }

    merged_meta = dict(existing.metadata or {}) if existing else {}
    for key in ACCOUNT_KEYS:
        merged_meta.pop(key, None)
    merged_meta.update(metadata or {})
    if email:
        merged_meta["email"] = email
    merged_meta.pop(FAILURE_KEY, None)
    merged_meta = {key: value for key, value in merged_meta.items() if value is not None}
    return GrantColumns(
        token_data=token_data,
        oauth_config=oauth_config,
        scopes=list(scopes) if scopes is not None else None,
        expiry=utc_naive(expiry) if expiry is not None else None,
        metadata=merged_meta,
    )
