"""Read google-auth authorized-user files (token.json) into Credentials, strictly.

These are what `Credentials.to_json()` and InstalledAppFlow scripts wrote, and what the
table was first imported from: `token`, `refresh_token`, `token_uri`, `client_id`,
`client_secret`, `scopes`, `expiry` (ISO, with or without a trailing Z).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.oauth2.credentials import Credentials

from .._core.record import GOOGLE_TOKEN_URI, parse_expiry, parse_scopes
from .._options import FileRefused, read_small_file


class TokenFileError(ValueError):
    """The file is not a usable authorized-user JSON file; the message says why in one line."""


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise TokenFileError(f"it has no {key!r}")
        return None
    if not isinstance(value, str):
        raise TokenFileError(f"its {key!r} is not a string")
    return value


def read_token_file(path: Path) -> Credentials:
    """Return the Credentials stored in an authorized-user JSON file.

    Raises:
        TokenFileError: not a regular file of at most 1 MiB, not JSON, not an object, no
            refresh token, a field of the wrong type, an unparseable expiry. The message
            never quotes a value.
        OSError: the file cannot be opened.
    """
    try:
        raw = read_small_file(path)
    except FileRefused as exc:
        raise TokenFileError(str(exc)) from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise TokenFileError("it is not JSON") from None
    if not isinstance(data, dict):
        raise TokenFileError("it is not a JSON object")
    if data.get("type") not in (None, "authorized_user"):
        raise TokenFileError("it is not an authorized-user file (see its 'type')")
    try:
        scopes = parse_scopes(data.get("scopes"))
        expiry = parse_expiry(data.get("expiry"))
    except ValueError as exc:
        raise TokenFileError(str(exc)) from None
    return Credentials(
        _text(data, "token") or _text(data, "access_token"),
        refresh_token=_text(data, "refresh_token", required=True),
        token_uri=_text(data, "token_uri") or GOOGLE_TOKEN_URI,
        client_id=_text(data, "client_id"),
        client_secret=_text(data, "client_secret"),
        scopes=list(scopes) if scopes is not None else None,
        expiry=expiry,
    )
