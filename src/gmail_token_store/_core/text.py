"""Text that crosses a trust boundary: untrusted text made printable, user ids checked.

Anything read from the database, a token endpoint or a browser is untrusted: an ESC
sequence can rewrite the operator's terminal, a CR or LF can forge a line of a table or a
log, a bidirectional override can reorder what is read. `printable` shows every such
character as a visible escape and cuts long text. User ids are the one thing from a caller
that reaches SQL: `parse_user_id` lets only canonical UUIDs through.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

# C0 controls (LF, CR, ESC, BEL, ...), DEL, C1 controls, the Unicode line and paragraph
# separators, and the bidirectional and zero-width format characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

#: Longest text `printable` returns by default: an error message stays one readable line.
DEFAULT_LIMIT = 200

# The form callers almost always use; checking it is cheaper than building a UUID.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """Return `text` with control and format characters escaped, cut to `limit` characters.

    The cut comes before escaping, so a huge value costs little; "…" marks it. The output
    holds no character this escapes, so text escaped twice is escaped once.
    """
    value = text if isinstance(text, str) else str(text)
    if limit is not None and len(value) > limit:
        return _UNSAFE.sub(_escape, value[: max(limit - 1, 0)]) + "…"
    return _UNSAFE.sub(_escape, value)


def mask(token: str | None) -> str:
    """Return a short prefix of a token for display; never enough to use it."""
    if not token:
        return "None"
    return f"'{token[:6]}…'" if len(token) >= 24 else "'…'"


class Masked(dict[str, Any]):
    """A dict that holds secrets (a row's token_data, the secrets a seal held): its repr
    shows its keys, never its values, wherever it ends up (a traceback's locals, a debug
    print of a record, a cache)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} keys: {', '.join(sorted(map(str, self)))[:200]}>"


def describe_user(user_id: str, email: str | None) -> str:
    """Return "user <id>" or "user <id> (<email>)" for messages, escaped and cut."""
    return f"user {user_id} ({printable(email, 80)})" if email else f"user {user_id}"


class BadUserId(ValueError):
    """Not a UUID; `errors.InvalidUserIdError` is what callers see (see `parse_user_id`)."""


def canonical_user_id(value: object) -> str:
    """Return the canonical lower-case text form of a UUID user id, or raise BadUserId.

    Accepts a `uuid.UUID` or a string that `uuid.UUID` accepts (with or without hyphens,
    any case). The bad value itself is not echoed: callers sometimes pass a token by
    mistake, and a message must never carry one.
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        if _CANONICAL.fullmatch(value):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise BadUserId(
                f"user_id must be a UUID such as 'dddddddd-dddd-dddd-dddd-dddddddddddd' "
                f"(got a {len(value)}-character string that is not one)"
            ) from None
    raise BadUserId(f"user_id must be a UUID string or uuid.UUID, not {type(value).__name__}")
