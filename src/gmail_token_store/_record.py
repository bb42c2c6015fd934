"""Where a gmail_token row becomes a TokenRecord, and a record becomes row values again.

Reading is tolerant because the table has had several writers: `token_data` may say
`token` instead of `access_token`, a JSONB column may hold JSON *text* (a string that
contains an object), `scopes` may be a list or a space-separated string, `expiry` may be
NULL or a timestamptz. Writing is strict: objects, not text; naive UTC expiries; the
access token under the key it was read from; every key we do not own left alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
#: The scope a service needs to send mail: only the "passport" consent grants it.
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"

#: metadata key under which a permanent refresh failure (invalid_grant) is recorded.
FAILURE_KEY = "refresh_failure"

#: The columns every read selects, in this order (see `parse_row`). The JSONB columns come
#: as text and are decoded here: psycopg's JSONB loader costs a few microseconds more per
#: column, which shows on the hot path.
COLUMNS = (
    "id, user_id, robeing_id, token_data::text, oauth_config::text, scopes::text,"
    " metadata::text, expiry, updated_at"
)


def fingerprint(refresh_token: str) -> str:
    """Return a short, one-way fingerprint of a refresh token, safe to store and log."""
    return "sha256:" + hashlib.sha256(refresh_token.encode()).hexdigest()[:16]


def utc_naive(value: datetime) -> datetime:
    """Return `value` as naive UTC (google-auth's convention); naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


_EPOCH = datetime(1970, 1, 1)


def epoch(value: datetime) -> float:
    """Seconds since the epoch of a naive-UTC datetime."""
    return (value - _EPOCH).total_seconds()


@dataclass(frozen=True, slots=True)
class RefreshFailure:
    """A permanent refresh failure recorded in metadata, still matching the stored refresh token."""

    error: str
    description: str
    at: str


# Not frozen: a frozen dataclass sets each of these fields through object.__setattr__,
# which costs microseconds on the hot path. Nothing mutates a record after parse_row.
@dataclass(slots=True)
class TokenRecord:
    """One gmail_token row, read tolerantly. `problem` says why it is unusable, if it is."""

    row_id: int
    user_id: str
    robeing_id: str | None
    email: str | None
    access_token: str | None = field(repr=False)
    access_token_key: str
    refresh_token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    client_in_row: bool
    token_uri: str
    scopes: tuple[str, ...] | None
    expiry: datetime | None
    expiry_epoch: float
    updated_at: datetime | None
    failure: RefreshFailure | None
    token_data: Mapping[str, Any] = field(repr=False)
    metadata: Mapping[str, Any] | None = field(repr=False)
    problem: str | None

    def seconds_left(self, now: float) -> float:
        """Seconds until the access token expires (-inf when there is none or no expiry)."""
        return self.expiry_epoch - now

    @property
    def reauth_reason(self) -> str | None:
        """Why only a new consent can help, or None while the grant may still work."""
        if self.problem is not None:
            return None
        if not self.refresh_token:
            return "no refresh token is stored"
        if self.failure is not None:
            detail = f" ({self.failure.description})" if self.failure.description else ""
            return f"the token endpoint answered {self.failure.error}{detail} at {self.failure.at}"
        return None

    @property
    def has_client(self) -> bool:
        return bool(self.client_id and self.client_secret)


class _Unreadable(ValueError):
    """A column's content cannot be understood; the message says which and why."""


def _decoded(text: Any) -> Any:
    """Decode a JSONB column selected as text (valid JSON by construction)."""
    return json.loads(text) if text.__class__ is str else text


def _object(value: Any, column: str, *, required: bool) -> dict[str, Any]:
    if value.__class__ is dict:  # what psycopg gives for a JSONB object: the common case
        return value
    if value is None:
        if required:
            raise _Unreadable(f"{column} is NULL")
        return {}
    if isinstance(value, str):  # older writers stored JSON text inside the JSONB column
        try:
            value = json.loads(value)
        except ValueError:
            raise _Unreadable(f"{column} holds text that is not JSON") from None
    if not isinstance(value, dict):
        raise _Unreadable(f"{column} is a JSON {type(value).__name__}, not an object")
    return value


def _optional_str(data: Mapping[str, Any], key: str, column: str) -> str | None:
    value = data.get(key)
    if value.__class__ is str:
        return value or None
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Unreadable(f"{column}.{key} is not a string")
    return value


def parse_scopes(value: Any) -> tuple[str, ...] | None:
    """Return scopes from a list, a space-separated string or JSON text of either."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", '"')):
            try:
                return parse_scopes(json.loads(text))
            except ValueError:
                raise _Unreadable("scopes holds text that is not JSON") from None
        return tuple(text.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _Unreadable("scopes is neither a list of strings nor a space-separated string")


def parse_expiry(value: Any) -> datetime | None:
    """Return a naive-UTC expiry from a datetime or an ISO string (with or without 'Z')."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc_naive(value)
    if isinstance(value, str):
        try:
            return utc_naive(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            raise _Unreadable("the expiry is not an ISO date-time") from None
    raise _Unreadable("the expiry is not a date-time")


def _recorded_failure(
    metadata: Mapping[str, Any], refresh_token: str | None
) -> RefreshFailure | None:
    # A failure only counts while the refresh token it was recorded for is still stored:
    # once save() or another writer stores a new one, the grant deserves a fresh try.
    entry = metadata.get(FAILURE_KEY)
    if not isinstance(entry, dict) or not refresh_token:
        return None
    if entry.get("refresh_token_fingerprint") != fingerprint(refresh_token):
        return None
    return RefreshFailure(
        error=str(entry.get("error", "unknown")),
        description=str(entry.get("description", "")),
        at=str(entry.get("at", "")),
    )


def parse_row(
    row: Sequence[Any], *, fallback_client: tuple[str | None, str | None] = (None, None)
) -> TokenRecord:
    """Turn a row selected with `COLUMNS` into a TokenRecord; never raises for bad content.

    Client credentials come from `oauth_config`, then `token_data` (token.json layout),
    then `fallback_client` (the store's constructor / environment).
    """
    row_id, user_id, robeing_id = row[0], row[1], row[2]
    raw_token_data, raw_oauth = _decoded(row[3]), _decoded(row[4])
    raw_scopes, raw_meta = _decoded(row[5]), _decoded(row[6])
    raw_expiry, updated_at = row[7], row[8]
    problems: list[str] = []

    try:
        token_data = _object(raw_token_data, "token_data", required=True)
    except _Unreadable as exc:
        problems.append(str(exc))
        token_data = {}
    try:
        oauth_config = _object(raw_oauth, "oauth_config", required=False)
    except _Unreadable as exc:
        problems.append(str(exc))
        oauth_config = {}
    metadata: dict[str, Any] | None
    try:
        metadata = _object(raw_meta, "metadata", required=False)
    except _Unreadable as exc:
        problems.append(str(exc))
        metadata = None

    legacy_key = "access_token" not in token_data and "token" in token_data
    access_key = "token" if legacy_key else "access_token"
    access_token = refresh_token = None
    client_id = client_secret = None
    token_uri = GOOGLE_TOKEN_URI
    scopes: tuple[str, ...] | None = None
    expiry: datetime | None = None
    try:
        access_token = _optional_str(token_data, access_key, "token_data")
        refresh_token = _optional_str(token_data, "refresh_token", "token_data")
        client_id = _optional_str(oauth_config, "client_id", "oauth_config") or _optional_str(
            token_data, "client_id", "token_data"
        )
        client_secret = _optional_str(
            oauth_config, "client_secret", "oauth_config"
        ) or _optional_str(token_data, "client_secret", "token_data")
        token_uri = (
            _optional_str(oauth_config, "token_uri", "oauth_config")
            or _optional_str(token_data, "token_uri", "token_data")
            or GOOGLE_TOKEN_URI
        )
        scopes = parse_scopes(raw_scopes if raw_scopes is not None else token_data.get("scopes"))
        expiry = parse_expiry(raw_expiry if raw_expiry is not None else token_data.get("expiry"))
    except _Unreadable as exc:
        problems.append(str(exc))
    if not problems and not access_token and not refresh_token:
        problems.append("token_data holds neither an access token nor a refresh token")

    client_in_row = bool(client_id and client_secret)
    if not client_in_row:
        client_id, client_secret = fallback_client
    email = metadata.get("email") if metadata else None
    return TokenRecord(
        row_id=row_id,
        user_id=str(user_id),
        robeing_id=robeing_id,
        email=email if isinstance(email, str) and email else None,
        access_token=access_token,
        access_token_key=access_key,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        client_in_row=client_in_row,
        token_uri=token_uri,
        scopes=scopes,
        expiry=expiry,
        expiry_epoch=epoch(expiry) if expiry is not None and access_token else -math.inf,
        updated_at=updated_at,
        failure=_recorded_failure(metadata or {}, refresh_token),
        token_data=token_data,
        metadata=metadata,
        problem="; ".join(problems) or None,
    )


# --- writing -------------------------------------------------------------------------


def refreshed_token_data(
    record: TokenRecord, access_token: str, rotated_refresh_token: str | None
) -> dict[str, Any]:
    """Return token_data with the new access token under the key it was read from."""
    data = dict(record.token_data)
    data[record.access_token_key] = access_token
    if rotated_refresh_token:
        data["refresh_token"] = rotated_refresh_token
    return data


def metadata_with_failure(
    record: TokenRecord, error: str, description: str, at: datetime
) -> dict[str, Any] | None:
    """Return metadata recording a permanent failure, or None when metadata is unreadable."""
    if record.metadata is None or not record.refresh_token:
        return None
    data = dict(record.metadata)
    data[FAILURE_KEY] = {
        "error": error,
        "description": description,
        "at": at.isoformat(timespec="seconds") + "Z",
        "refresh_token_fingerprint": fingerprint(record.refresh_token),
    }
    return data


def metadata_without_failure(record: TokenRecord) -> dict[str, Any] | None:
    """Return metadata without a recorded failure, or None when there is nothing to remove."""
    if not record.metadata or FAILURE_KEY not in record.metadata:
        return None
    return {key: value for key, value in record.metadata.items() if key != FAILURE_KEY}


@dataclass(frozen=True, slots=True)
class GrantColumns:
    """The column values `save()` writes for a grant, in the seed's layout."""

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
    access token is stored; metadata keeps every key, takes `metadata` and `email` on top,
    and loses any recorded refresh failure.
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
    merged_meta.update(metadata or {})
    if email:
        merged_meta["email"] = email
    merged_meta.pop(FAILURE_KEY, None)
    return GrantColumns(
        token_data=token_data,
        oauth_config=oauth_config,
        scopes=list(scopes) if scopes is not None else None,
        expiry=utc_naive(expiry) if expiry is not None else None,
        metadata=merged_meta,
    )
