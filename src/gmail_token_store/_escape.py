"""Make text from the database or the token endpoint safe to show on a terminal.

Anything in a row (an email, an error description recorded by another program) or in a
token endpoint's answer is untrusted: an ESC sequence can rewrite the operator's terminal,
a CR or LF can forge a line of a table or a log, a bidirectional override can reorder what
is read. `printable` shows every such character as a visible escape and cuts long text.
"""

from __future__ import annotations

import re

# C0 controls (LF, CR, ESC, BEL, ...), DEL, C1 controls, the Unicode line and paragraph
# separators, and the bidirectional and zero-width format characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")

#: Longest text `printable` returns by default: an error message stays one readable line.
DEFAULT_LIMIT = 200


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
