"""Validate user ids before they reach SQL."""

from __future__ import annotations

import re
import uuid

from .exceptions import InvalidUserIdError

# The form callers almost always use; checking it is cheaper than building a UUID.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_user_id(value: object) -> str:
    """Return the canonical lower-case text form of a UUID user id.

    Accepts a `uuid.UUID` or a string that `uuid.UUID` accepts (with or without hyphens,
    any case). The bad value itself is not echoed: callers sometimes pass a token by
    mistake, and a message must never carry one.

    Raises:
        InvalidUserIdError: (a ValueError) for anything else, before any query runs.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if _CANONICAL.fullmatch(value):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise InvalidUserIdError(
                f"user_id must be a UUID such as 'dddddddd-dddd-dddd-dddd-dddddddddddd' "
                f"(got a {len(value)}-character string that is not one)"
            ) from None
    raise InvalidUserIdError(
        f"user_id must be a UUID string or uuid.UUID, not {type(value).__name__}"
    )
