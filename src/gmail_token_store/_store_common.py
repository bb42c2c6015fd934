"""Small pieces both stores use outside the flows: input checks and result building."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.oauth2.credentials import Credentials

from ._core import Core
from ._record import TokenRecord
from ._results import RefreshResult

_TIMESTAMPTZ_OID = 1184
#: The width of the production table's robeing_id column (VARCHAR(50)).
_ROBEING_ID_MAX = 50


def check_save_input(credentials: object, robeing_id: object, metadata: object) -> None:
    """Refuse what `save` cannot store, before anything is written (ValueError)."""
    if not isinstance(credentials, Credentials):
        raise ValueError("credentials must be google.oauth2.credentials.Credentials")
    if not credentials.token and not credentials.refresh_token:
        raise ValueError("credentials hold neither an access token nor a refresh token")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    if robeing_id is not None and (
        not isinstance(robeing_id, str) or len(robeing_id) > _ROBEING_ID_MAX
    ):
        raise ValueError(f"robeing_id must be a string of at most {_ROBEING_ID_MAX} characters")


def refresh_result(
    core: Core, seen: TokenRecord, record: TokenRecord, credentials: Credentials, local_now: float
) -> RefreshResult:
    """The RefreshResult of `refresh()`: "refreshed" when the token changed."""
    assert record.access_token is not None  # noqa: S101 - a served record has one
    assert record.expiry is not None  # noqa: S101
    return RefreshResult(
        status="refreshed" if record.access_token != seen.access_token else "valid",
        user_id=record.user_id,
        email=record.email,
        expires_in=max(int(record.seconds_left(core.clock.db_now(local_now))), 0),
        expiry=record.expiry,
        access_token=record.access_token,
        credentials=credentials,
    )


def timestamptz_column(description: Sequence[Any] | None, index: int) -> bool:
    """Is column `index` of a cursor's description a timestamptz?"""
    return (
        description is not None
        and len(description) > index
        and (description[index].type_code == _TIMESTAMPTZ_OID)
    )
