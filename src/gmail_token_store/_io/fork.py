"""Fork safety: a child process never uses what its parent opened.

Services fork after first use (gunicorn --preload with a warm-up call, Celery prefork, a
plain os.fork). A pooled socket used by parent and child at once interleaves their
protocol messages: answers go to the wrong process, and one user's token to another. So
right after a fork, in the child, every live store forgets its connections, HTTP client,
locks and in-flight refreshes (`os.register_at_fork`), and opens new ones on first use.

Forgetting is not closing: closing would send PostgreSQL a Terminate on the parent's
session. The parent's objects are kept referenced in the child (`inherit`) so that
garbage collection never finalizes them there either; psycopg itself never finishes a
connection from another process (it checks the pid).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
_lock = threading.Lock()
#: What the parent had open at the fork; never used, never finalized in the child.
_inherited: list[object] = []


def register(after_fork_in_child: Callable[[], None]) -> None:
    """Call this bound method in every child forked from now on (while its object lives)."""
    with _lock:
        _callbacks[:] = [ref for ref in _callbacks if ref() is not None]
        _callbacks.append(weakref.WeakMethod(after_fork_in_child))


def inherit(resources: object) -> None:
    """Keep a parent's resources referenced (and untouched) in the child."""
    _inherited.append(resources)


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603 - the parent's may have been held at the fork
    _lock = threading.Lock()
    for ref in list(_callbacks):
        callback = ref()
        if callback is not None:
            callback()


os.register_at_fork(after_in_child=_after_fork_in_child)
