"""The commands cron runs: refresh-all (the keepalive) and notify (the notices)."""

from __future__ import annotations

import argparse
import os
import sys

from .. import KeepaliveReport, TokenStore
from .common import DAY, EXIT_FAILURE, EXIT_OK, Failure, open_store, public_url, say, secret


def print_progress(report: KeepaliveReport) -> None:
    say(
        f"refresh-all: {report.processed}/{report.due} done, {report.refreshed} refreshed, "
        f"{len(report.need_reauth) + len(report.failed)} need a person",
        sys.stderr,
    )


def refresh_all(args: argparse.Namespace) -> int:
    within = args.within
    # One connection and one HTTP connection per worker, plus one for the listing.
    with open_store(args, max_connections=args.concurrency + 1) as store:
        report = store.refresh_all(
            within=within,
            idle_days=args.idle_days,
            concurrency=args.concurrency,
            progress=print_progress,
        )
        say(f"refresh-all: {report.checked} grants, {report.due} due or idle")
        say(f"  refreshed:             {report.refreshed}")
        say(f"  still valid:           {report.still_valid}")
        say(f"  taken by another run:  {report.taken}")
        say(f"  need re-authorization: {len(report.need_reauth)}")
        say(f"  failed:                {len(report.failed) + len(report.retry_later)}")
        for label, rows in (
            ("need re-authorization", report.need_reauth),
            ("failed (an operator must look)", report.failed),
            ("failed (will be retried next run)", report.retry_later),
        ):
            for who, why in rows:
                say(f"{label}: {who}: {why}")
        delivered = True
        if args.webhook:
            delivered = notices(store, args)
    return EXIT_FAILURE if report.needs_a_person or not delivered else EXIT_OK


def notices(store: TokenStore, args: argparse.Namespace) -> bool:
    """Send the due notices to `args.notify` / `args.webhook`; True if all were delivered."""
    from ..notices import send_notices  # noqa: PLC0415

    webhook_secret = os.environ.get("GMAIL_TOKEN_STORE_WEBHOOK_SECRET", "")
    if not webhook_secret:
        raise Failure(
            "set GMAIL_TOKEN_STORE_WEBHOOK_SECRET to the webhook's signing secret (whsec_...)"
        )
    try:
        report = send_notices(
            store,
            args.webhook,
            secret=webhook_secret,
            public_url=public_url(args.public_url),  # notices carry a reconnect link
            link_secret=secret(),
            slack=args.format == "slack",
            consent_lifetime=args.consent_lifetime_days * DAY
            if args.consent_lifetime_days
            else None,
            warn_before=args.warn_days * DAY,
        )
    except ValueError as exc:  # the webhook secret's form
        raise Failure(str(exc)) from None
    say(
        f"notify: {report.checked} grants, {len(report.sent)} notices sent, "
        f"{len(report.failed)} failed (sent next run), {report.skipped} left for the next run"
    )
    for who, event in report.sent:
        say(f"sent: {who}: {event}")
    for who, why in report.failed:
        say(f"failed: {who}: {why}")
    return not report.failed


def notify(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        delivered = notices(store, args)
    return EXIT_OK if delivered else EXIT_FAILURE
