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
from .sealing import ACCESS, SEALED_KEY, Sealer, plain_columns, sealed_columns


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


def refreshed_columns(
    record: TokenRecord, access_token: str, refresh_token: str | None, sealer: Sealer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """token_data with the new tokens (under the key the access token was read from), and
    the oauth_config to write, or None to leave it: a store that seals seals the row
    (its client secret leaves oauth_config), a store that does not unseals a sealed row
    (the secret goes back), and a plaintext row stays as it was but for the tokens."""
    client_secret = record.client_secret if record.client_in_row else None
    refresh_token = refresh_token or record.refresh_token  # (not rotated: the same one)
    if sealer is not None and sealer.sealing:
        data, config = sealed_columns(
            sealer,
            user_id=record.user_id,
            token_uri=record.token_uri,
            token_data=record.token_data,
            oauth_config=record.oauth_config,
            access_token=access_token,
            access_token_key=record.access_token_key,
            refresh_token=refresh_token,
            client_secret=client_secret,
            fingerprint=fingerprint(refresh_token) if refresh_token else None,
        )
        changed = record.oauth_config is not None and "client_secret" in record.oauth_config
        return data, config if changed else None
    data, config = plain_columns(
        token_data=record.token_data,
        oauth_config=record.oauth_config,
        access_token=access_token,
        access_token_key=record.access_token_key,
        refresh_token=refresh_token,
        client_secret=client_secret if record.key_id is not None else None,
    )
    return data, config if record.key_id is not None and client_secret else None


def metadata_with_failure(
    record: TokenRecord, error: str, description: str, at: datetime, *, source: str | None = None
) -> dict[str, Any] | None:
    """Return metadata recording a permanent failure, or None when metadata is unreadable.

    `source` "risc" says Google reported it (a security event), not the token endpoint.
    """
    token_fingerprint = record.refresh_token_fingerprint()
    if record.metadata is None or token_fingerprint is None:
        return None
    data = dict(record.metadata)
    data[FAILURE_KEY] = {
        "error": error,
        "description": description,
        "at": at.isoformat(timespec="seconds") + "Z",
        "refresh_token_fingerprint": token_fingerprint,
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
    user_id: str,
    sealer: Sealer | None,
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
    token_data.pop(SEALED_KEY, None)
    # What the new grant does not say stays the row's (a sealed row's, opened).
    refresh_token = refresh_token or (existing.refresh_token if existing else None)
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
    # The row's own client secret, when the grant brings no client (sealed, or not).
    own_secret = (
        existing.client_secret
        if oauth_config is None and existing is not None and existing.client_in_row
        else None
    )
    if sealer is not None and sealer.sealing:
        sealed_secret = client_secret if oauth_config is not None else own_secret
        if own_secret is not None and existing is not None:
            config = existing.oauth_config
            oauth_config = dict(config) if config is not None else None
        token_data, oauth_config = sealed_columns(
            sealer,
            user_id=user_id,
            token_uri=(oauth_config or {}).get("token_uri")
            or (existing.token_uri if existing else None)
            or GOOGLE_TOKEN_URI,
            token_data=token_data,
            oauth_config=oauth_config,
            access_token=access_token,
            access_token_key=ACCESS,
            refresh_token=refresh_token,
            client_secret=sealed_secret,
            fingerprint=fingerprint(refresh_token) if refresh_token else None,
        )
    elif own_secret is not None and existing is not None and existing.key_id is not None:
        # A sealed row written in plaintext: its client secret comes out of the seal.
        token_data, oauth_config = plain_columns(
            token_data=token_data,
            oauth_config=existing.oauth_config,
            access_token=None,
            access_token_key=ACCESS,
            refresh_token=None,
            client_secret=own_secret,
        )

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
