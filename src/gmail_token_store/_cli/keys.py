"""The commands that seal a table in service: encrypt-all, rotate-keys, decrypt-all."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from .. import ResealReport, ResealTarget
from .._core.text import printable
from .common import EXIT_FAILURE, EXIT_OK, open_store, say

#: What each command asks of the rows, and what it calls a row it rewrote.
_TARGETS: dict[str, tuple[ResealTarget, str]] = {
    "encrypt-all": ("seal", "sealed"),
    "rotate-keys": ("rotate", "re-sealed with the sealing key"),
    "decrypt-all": ("unseal", "unsealed"),
}
#: Seconds between progress lines on stderr.
_PROGRESS_EVERY = 2.0


def _progress(name: str) -> Callable[[ResealReport], None]:
    last = [time.monotonic()]

    def show(report: ResealReport) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY:
            last[0] = now
            say(f"{name}: {report.rows} rows walked, {report.rewritten} rewritten", sys.stderr)

    return show


def reseal(args: argparse.Namespace) -> int:
    name: str = args.command
    target, done = _TARGETS[name]
    # decrypt-all opens sealed rows and writes plaintext: a store that does not seal.
    with open_store(args, unsealing=target == "unseal") as store:
        report = store.reseal_all(target, page_size=args.page_size, progress=_progress(name))
        sealing_key = store.sealing_key_id
    say(f"{name}: {report.rows} rows, {report.rewritten} {done} by this run")
    say(f"  already as wanted:          {report.unchanged}")
    if target == "rotate":
        say(f"  plaintext (encrypt-all):    {report.plaintext}")
    say(f"  unreadable (left, see list): {report.unreadable}")
    say(f"  changed meanwhile (run again): {report.busy}")
    for key_id, count in sorted(report.missing_key.items()):
        say(f"  sealed with key {printable(key_id, 64)}, which this store lacks: {count}")
    if report.complete and target != "unseal" and sealing_key is not None:
        say(
            f"every sealed row is sealed with key {sealing_key}"
            + (
                ": the other keys can leave the keyring once every service has this one first"
                if target == "rotate"
                else ""
            )
        )
    return EXIT_OK if report.complete else EXIT_FAILURE


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """encrypt-all, rotate-keys, decrypt-all (keys from $GMAIL_TOKEN_STORE_KEYS or
    $GMAIL_TOKEN_STORE_KEYS_FILE)."""
    for name, help_text in (
        ("encrypt-all", "seal the secrets of every plaintext row with the first key, online"),
        ("rotate-keys", "re-seal every row sealed with another key with the first key, online"),
        ("decrypt-all", "put the secrets of every sealed row back in plaintext, online"),
    ):
        sub = command(
            name,
            reseal,
            help_text + " (keys: $GMAIL_TOKEN_STORE_KEYS or $GMAIL_TOKEN_STORE_KEYS_FILE)",
        )
        sub.add_argument(
            "--page-size",
            type=int,
            default=500,
            metavar="N",
            help="rows read and rewritten per statement (default: 500)",
        )
