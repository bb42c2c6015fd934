"""Log lines and TokenEvents: how a shell tells the service what happened.

Both shells perform the core's `Emit` and `Log` effects here. Messages are built by the
core with untrusted text already escaped; no secret is ever part of one.
"""

from __future__ import annotations

import logging

from .._core.effects import Emit
from .._core.events import EventHook, TokenEvent

logger = logging.getLogger("gmail_token_store")


def announce(emit: Emit, hook: EventHook | None, now: float) -> None:
    """Log `emit` (if it has a message) and pass its TokenEvent to the hook."""
    if emit.message:
        logger.log(emit.level, "%s", emit.message)
    if hook is None:
        return
    event = TokenEvent(
        kind=emit.kind,
        user_id=emit.user_id,
        email=emit.email,
        duration=max(now - emit.started, 0.0),
        error=emit.error,
        message=emit.message,
    )
    try:
        hook(event)
    except Exception:
        logger.exception("the on_event hook raised for a %s event; ignored", emit.kind)
