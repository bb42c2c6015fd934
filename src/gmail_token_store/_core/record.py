"""Where a gmail_token row becomes a TokenRecord.

Reading is tolerant because the table has had several writers: `token_data` may say
`token` instead of `access_token`, a JSONB column may hold JSON *text* (a string that
contains an object), `scopes` may be a list or a space-separated string, `expiry` may be
NULL or a timestamptz.

Reading is also defensive, because PostgreSQL accepts rows that would hurt a reader: JSON
nested thousands deep (Python's decoder raises RecursionError), numbers with thousands of
digits (ValueError), multi-megabyte columns, hundreds of thousands of scopes. Such a row is
reported with a `problem` (state `broken`); it never raises here and never stops a listing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .sealing import (
    ACCESS,
    CLIENT_SECRET,
    REFRESH,
    KeyUnavailable,
    SealBroken,
    Sealer,
    associated_data,
    key_id,
    sealed_part,
)
from .text import Masked

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
#: The scope a service needs to send mail: only the "passport" consent grants it.
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"

#: metadata key under which a permanent refresh failure (invalid_grant) is recorded.
FAILURE_KEY = "refresh_failure"
#: metadata keys a verified consent records: the Google account id (the ID token's `sub`),
#: that the email and account were verified, and when the user consented.
ACCOUNT_ID_KEY = "google_account_id"
VERIFIED_KEY = "account_verified"
CONSENTED_AT_KEY = "consented_at"
ACCOUNT_KEYS = (ACCOUNT_ID_KEY, VERIFIED_KEY, CONSENTED_AT_KEY)

#: A JSON column longer than this is refused: real rows hold a few hundred bytes, and a
#: multi-megabyte one would be decoded on every read of the row.
MAX_COLUMN_CHARS = 64 * 1024
#: Gmail has about a dozen scopes; a grant with more than this many is not a real one.
MAX_SCOPES = 256
#: JSON nested deeper than this is refused, whatever the interpreter's recursion limit
#: would allow (Python 3.13 decodes thousands of levels that 3.11 refuses).
MAX_DEPTH = 64


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


def from_epoch(seconds: float) -> datetime:
    """The naive-UTC datetime of an epoch time (the inverse of `epoch`)."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


#: Epoch seconds of the first and the last instant a datetime can hold (years 1 to 9999).
EARLIEST_EPOCH = epoch(datetime.min)
LATEST_EPOCH = epoch(datetime.max)


def in_range(seconds: float) -> bool:
    """Can `seconds` (epoch) be a datetime? Not infinity, NaN or beyond years 1 to 9999."""
    return EARLIEST_EPOCH <= seconds <= LATEST_EPOCH


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """An OAuth client: the store's fallback for rows that carry none (secret masked)."""

    client_id: str | None
    client_secret: str | None = field(repr=False)


NO_CLIENT = OAuthClient(None, None)


@dataclass(frozen=True, slots=True)
class RefreshFailure:
    """A permanent refresh failure recorded in metadata, still matching the stored refresh token."""

    error: str
    description: str
    at: str
    #: Who said the grant is dead: the token endpoint (invalid_grant), or "risc" (Google's
    #: Cross-Account Protection event, see `TokenStore.record_revocation`).
    source: str = "token_endpoint"


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
    #: Seconds since the epoch when the access token expires; -inf without a token or expiry.
    expiry_epoch: float
    updated_at: datetime | None
    #: The row version (`xmin` as text): changes with every write, whatever the layout.
    version: str | None
    failure: RefreshFailure | None
    #: The Google account a verified consent recorded (`sub`), or None (never verified:
    #: an import, another writer, a row from before the consent flow).
    google_account_id: str | None
    #: When the user consented (a verified consent's record), naive UTC.
    consented_at: datetime | None
    token_data: Mapping[str, Any] = field(repr=False)
    metadata: Mapping[str, Any] | None = field(repr=False)
    problem: str | None
    #: The row's oauth_config as read (None: NULL or unreadable), for writing it back.
    oauth_config: Mapping[str, Any] | None = field(default=None, repr=False)
    #: The key the row's secrets are sealed with (None: plaintext); the one this store
    #: lacks, when it cannot open them (`sealing`).
    key_id: str | None = None
    missing_key: str | None = None
    #: What a sealed row keeps beside its sealed refresh token, usable without the key:
    #: `fingerprint`, and Google's identifiers (`prefix_sha256`, `hash_base64_sha512_sha512`).
    sealed_ids: Mapping[str, str] | None = field(default=None, repr=False)
    #: Whether token_data and oauth_config were read whole and the secrets are known: the
    #: row's secrets may be sealed again or unsealed (`reseal`) without losing anything.
    rewritable: bool = False

    def refresh_token_fingerprint(self) -> str | None:
        """The stored refresh token's fingerprint (from beside the seal when it is sealed)."""
        if self.refresh_token:
            return fingerprint(self.refresh_token)
        return self.sealed_ids.get("fingerprint") if self.sealed_ids else None

    def seconds_left(self, db_now: float) -> float:
        """Seconds until the access token expires by the database's clock (-inf: no token)."""
        return self.expiry_epoch - db_now

    @property
    def reauth_reason(self) -> str | None:
        """Why only a new consent can help, or None while the grant may still work."""
        if self.problem is not None:
            return None
        if not self.refresh_token:
            return "no refresh token is stored"
        if self.failure is not None:
            failure = self.failure
            if failure.source == "risc":
                what = f"Google reported {failure.description}"
                return f"{what} (Cross-Account Protection) at {failure.at}"
            detail = f" ({failure.description})" if failure.description else ""
            return f"the token endpoint answered {failure.error}{detail} at {failure.at}"
        return None

    @property
    def has_client(self) -> bool:
        return bool(self.client_id and self.client_secret)


class _Unreadable(ValueError):
    """A column's content cannot be understood; the message says which and why."""


def _decoded(text: Any, column: str) -> Any:
    """Decode a JSON column selected as text; hostile content becomes _Unreadable."""
    if text.__class__ is not str:
        return text
    if len(text) > MAX_COLUMN_CHARS:  # (reads are cut one character past the limit)
        raise _Unreadable(f"{column} holds more than {MAX_COLUMN_CHARS:,} characters")
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(text):
        raise _Unreadable(f"{column} is nested too deeply")
    try:
        return json.loads(text)
    except RecursionError:
        raise _Unreadable(f"{column} is nested too deeply") from None
    except ValueError:  # also numbers with more digits than int() accepts
        raise _Unreadable(f"{column} holds JSON that cannot be decoded") from None


def _too_deep(text: str) -> bool:
    """Does this JSON nest deeper than MAX_DEPTH? (Only run when it might: it is a loop.)"""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _object(value: Any, column: str, *, required: bool) -> dict[str, Any]:
    if value.__class__ is dict:  # the common case
        return value
    if value is None:
        if required:
            raise _Unreadable(f"{column} is NULL")
        return {}
    if isinstance(value, str):  # older writers stored JSON text inside the JSONB column
        value = _decoded(value, column)
    if not isinstance(value, dict):
        raise _Unreadable(f"{column} is a JSON {type(value).__name__}, not an object")
    return value


def _optional_str(data: Mapping[str, Any], key: str, column: str) -> str | None:
    value = data.get(key)
    if value.__class__ is str:
        return value or None
    if value is None:
        return None
    raise _Unreadable(f"{column}.{key} is not a string")


def parse_scopes(value: Any) -> tuple[str, ...] | None:
    """Return scopes from a list, a space-separated string or JSON text of either."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", '"')):
            return parse_scopes(_decoded(text, "scopes"))
        scopes = tuple(text.split())
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        scopes = tuple(value)
    else:
        raise _Unreadable("scopes is neither a list of strings nor a space-separated string")
    if len(scopes) > MAX_SCOPES:
        raise _Unreadable(f"scopes lists {len(scopes):,} scopes (at most {MAX_SCOPES})")
    return scopes


def parse_expiry(value: Any) -> datetime | None:
    """Return a naive-UTC expiry from epoch seconds (the column, as selected), a datetime or
    an ISO string (with or without 'Z'). Infinity, a year past 9999 or an offset that
    carries it there is unreadable, never an OverflowError."""
    if value is None or value == "":
        return None
    if value.__class__ is float:
        if not in_range(value):
            raise _Unreadable("the expiry is out of range (infinity, or beyond year 9999)")
        return from_epoch(value)
    try:
        if isinstance(value, datetime):
            return utc_naive(value)
        if isinstance(value, str):
            try:
                return utc_naive(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                raise _Unreadable("the expiry is not an ISO date-time") from None
    except OverflowError:
        raise _Unreadable("the expiry is out of range (beyond year 9999 in UTC)") from None
    raise _Unreadable("the expiry is not a date-time")


def _updated_at(value: float | None, problems: list[str]) -> datetime | None:
    """The row's updated_at (epoch seconds, as selected) as a naive datetime in the server's
    zone, or None (and a problem) when it cannot be one."""
    if value is None:
        return None
    if not in_range(value):
        problems.append("updated_at is out of range (infinity, or beyond year 9999)")
        return None
    return from_epoch(value)


def _recorded_failure(
    metadata: Mapping[str, Any], refresh_token: str | None, known: str | None = None
) -> RefreshFailure | None:
    # A failure only counts while the refresh token it was recorded for is still stored:
    # once save() or another writer stores a new one, the grant deserves a fresh try.
    # (`known`: the token's fingerprint stored beside a sealed value.)
    entry = metadata.get(FAILURE_KEY)
    if not isinstance(entry, dict) or not (refresh_token or known):
        return None
    if entry.get("refresh_token_fingerprint") != (known or fingerprint(refresh_token or "")):
        return None
    return RefreshFailure(
        error=str(entry.get("error", "unknown")),
        description=str(entry.get("description", "")),
        at=str(entry.get("at", "")),
        source="risc" if entry.get("source") == "risc" else "token_endpoint",
    )


@dataclass(frozen=True, slots=True)
class _Seal:
    """A row's sealed value as opened (`secrets` None: it did not open)."""

    key_id: str | None
    access_key: str
    secrets: Mapping[str, str] | None
    missing_key: str | None
    ids: Mapping[str, str]


NO_SEAL = _Seal(None, "access_token", None, None, {})


def _open(
    sealed: Mapping[str, Any],
    sealer: Sealer | None,
    user_id: str,
    token_uri: str,
    problems: list[str],
) -> _Seal:
    """The row's sealed value opened with `sealer`; why not, in `problems`."""
    stored_key = sealed.get("access_token_key")
    access_key = stored_key if stored_key in ("access_token", "token") else "access_token"
    secrets: Mapping[str, str] | None = None
    missing: str | None = None
    try:
        if sealer is None:
            raise KeyUnavailable(key_id(sealed))
        secrets = sealer.open(sealed, associated_data(user_id, token_uri))
    except KeyUnavailable as exc:
        problems.append(f"its secrets are sealed with key {exc.key_id}, which this store lacks")
        missing = exc.key_id
    except SealBroken:
        problems.append("its sealed secrets do not open: altered, or another user's or token URI's")
    return _Seal(key_id(sealed), access_key, secrets, missing, _sealed_ids(sealed))


def _sealed_ids(sealed: Mapping[str, Any]) -> dict[str, str]:
    """The refresh token's fingerprint and Google's identifiers kept beside a seal."""
    ids = sealed.get("refresh_token_ids")
    found = {
        name: value
        for name, value in (ids.items() if isinstance(ids, dict) else ())
        if name in ("prefix_sha256", "hash_base64_sha512_sha512") and isinstance(value, str)
    }
    stored = sealed.get("refresh_token_fingerprint")
    if isinstance(stored, str):
        found["fingerprint"] = stored
    return found


def _verified_account(metadata: Mapping[str, Any] | None) -> str | None:
    if not metadata or metadata.get(VERIFIED_KEY) is not True:
        return None
    sub = metadata.get(ACCOUNT_ID_KEY)
    return sub if isinstance(sub, str) and sub else None


def _consented_at(metadata: Mapping[str, Any] | None) -> datetime | None:
    value = (metadata or {}).get(CONSENTED_AT_KEY)
    if not isinstance(value, str):
        return None
    try:
        return parse_expiry(value)
    except _Unreadable:
        return None


def _column(raw: Any, column: str, problems: list[str], *, required: bool) -> dict[str, Any] | None:
    """The column as an object, or None (and a problem) when it cannot be read."""
    try:
        return _object(_decoded(raw, column), column, required=required)
    except _Unreadable as exc:
        problems.append(str(exc))
        return None


#: How many of a read's leading columns `parse_row` reads (`_io.sql.COLUMNS`'s first ten:
#: id to the row version); the record is a function of these alone.
ROW_COLUMNS = 10


def parse_row(
    row: Sequence[Any], *, fallback_client: OAuthClient = NO_CLIENT, sealer: Sealer | None = None
) -> TokenRecord:
    """Turn a row selected with `_sql.COLUMNS` into a TokenRecord; never raises for content.

    Client credentials come from `oauth_config`, then `token_data` (token.json layout),
    then `fallback_client` (the store's constructor / environment). A sealed row's secrets
    are opened with `sealer` (see `sealing`).
    """
    problems: list[str] = []
    token_data = Masked(_column(row[3], "token_data", problems, required=True) or ())
    # (NULL stays None: a write back leaves it NULL.)
    oauth_column = (
        None if row[4] is None else _column(row[4], "oauth_config", problems, required=False)
    )
    if oauth_column is not None:
        oauth_column = Masked(oauth_column)
    oauth_config: Mapping[str, Any] = oauth_column or {}
    columns_read = not problems
    # None when unreadable: then it is never written back.
    metadata = _column(row[6], "metadata", problems, required=False)

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
        raw_scopes = row[5]
        scopes = parse_scopes(
            _decoded(raw_scopes, "scopes") if raw_scopes is not None else token_data.get("scopes")
        )
        expiry = parse_expiry(row[7] if row[7] is not None else token_data.get("expiry"))
    except _Unreadable as exc:
        problems.append(str(exc))
        columns_read = False  # a value of the wrong kind: nothing is rewritten around it
    sealed = sealed_part(token_data)
    seal = _open(sealed, sealer, row[1], token_uri, problems) if sealed is not None else NO_SEAL
    if sealed is not None:
        access_key = seal.access_key
        if seal.secrets is not None:
            access_token, refresh_token = seal.secrets.get(ACCESS), seal.secrets.get(REFRESH)
            client_secret = seal.secrets.get(CLIENT_SECRET) or client_secret
    updated_at = _updated_at(row[8], problems)
    if not problems and not access_token and not refresh_token:
        problems.append("token_data holds neither an access token nor a refresh token")

    client_in_row = bool(client_id and client_secret)
    if not client_in_row:
        client_id, client_secret = fallback_client.client_id, fallback_client.client_secret
    email = metadata.get("email") if metadata else None
    return TokenRecord(
        row_id=row[0],
        user_id=row[1],
        robeing_id=row[2],
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
        version=row[9],
        failure=_recorded_failure(metadata or {}, refresh_token, seal.ids.get("fingerprint")),
        google_account_id=_verified_account(metadata),
        consented_at=_consented_at(metadata),
        token_data=token_data,
        metadata=metadata,
        problem="; ".join(problems) or None,
        oauth_config=oauth_column,
        key_id=seal.key_id,
        missing_key=seal.missing_key,
        sealed_ids=seal.ids if sealed is not None else None,
        rewritable=columns_read and (sealed is None or seal.secrets is not None),
    )


#: Where `_io.sql`'s listing statements put what SQL extracted from a row in the production
#: layout ("canonical", see `listed_record`): after the 13 columns every read has.
CANONICAL, ACCESS_AT, REFRESH_AT, CLIENT_ID_AT, CLIENT_SECRET_AT, TOKEN_URI_AT, SCOPES_AT = range(
    13, 20
)
_NO_DATA: Mapping[str, Any] = Masked()


def listed_record(row: Sequence[Any]) -> TokenRecord:
    """The record of a listed row that SQL found in the production layout: the record
    `parse_row` makes of it, without decoding its JSON columns (SQL extracted the fields).

    "Canonical" (the listing statements' predicate) means: token_data and oauth_config are
    small objects with non-empty string tokens and client, token URIs strings or absent, no
    seal; scopes a small array of strings; metadata NULL or a small object; the expiry set
    and both timestamps between 1900 and 10000. For such a row `parse_row` finds no problem
    and reads exactly these fields, which `tests/test_listing.py` checks. The record is for
    classifying only: it carries no token_data to write back (`rewritable` is False).
    """
    problems: list[str] = []
    metadata = _column(row[6], "metadata", problems, required=False)
    expiry = from_epoch(row[7])
    refresh_token: str = row[REFRESH_AT]
    email = metadata.get("email") if metadata else None
    client_id, client_secret = row[CLIENT_ID_AT], row[CLIENT_SECRET_AT]
    return TokenRecord(
        row_id=row[0],
        user_id=row[1],
        robeing_id=row[2],
        email=email if isinstance(email, str) and email else None,
        access_token=row[ACCESS_AT],
        access_token_key=ACCESS,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        client_in_row=True,
        token_uri=row[TOKEN_URI_AT],
        scopes=tuple(row[SCOPES_AT]),
        expiry=expiry,
        expiry_epoch=epoch(expiry),
        updated_at=from_epoch(row[8]) if row[8] is not None else None,
        version=row[9],
        failure=_recorded_failure(metadata or {}, refresh_token),
        google_account_id=_verified_account(metadata),
        consented_at=_consented_at(metadata),
        token_data=_NO_DATA,
        metadata=metadata,
        problem="; ".join(problems) or None,
    )
