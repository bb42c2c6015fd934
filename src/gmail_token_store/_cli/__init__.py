"""The `gmail-token-store` command: operator tooling that drives the stores through their
public methods (see `command`)."""

from __future__ import annotations

from .command import main

__all__ = ["main"]
