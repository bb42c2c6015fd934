"""Notices: which grant needs a person, the message that says so, and its signature.

A grant that dies at night should not be found by the next failed email. For each row
the keepalive's cron looks at, `notice_for` decides the event (if any) worth a message:

* `grant.dead`: a new consent is needed (invalid_grant recorded, or no refresh token);
* `grant.broken`: an operator must fix the row;
* `grant.expiring`: the consent is older than the configured lifetime minus a warning
  (apps in Google's "Testing" status: refresh tokens die 7 days after consent);
* `grant.idle`: not refreshed for 150 days (Google drops a refresh token unused for six
  months);
* `grant.reconnected`: a grant that was reported is healthy again.

Once per event: the last notice is recorded in the row's metadata (`notice`: event, id,
status), claimed by compare-and-set on the row version before sending (two runs at once
send it once) and marked sent after the receiver's 2xx; a receiver that is down leaves it
`failed`, and the next run sends it again, with the same message id (the receiver's
idempotency key). Messages are signed the Standard Webhooks way. No token, no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .effects import Deliver, Flow, Query, Statement, once_more_if_lost
from .exchange import EndpointUnreachable
from .keepalive import label
from .record import TokenRecord, epoch, from_epoch
from .state import Core
from .status import TokenStatus, classify
from .writes import to_json

#: Rows per statement when notices walk the whole table.
PAGE_ROWS = 2000

NoticeEvent = Literal[
    "grant.dead", "grant.broken", "grant.expiring", "grant.idle", "grant.reconnected"
]
#: metadata key of the last notice sent (or being sent) for the row.
NOTICE_KEY = "notice"
#: A claimed notice whose sender vanished before marking it is sent again after this long.
PENDING_TIMEOUT = 300.0
_BY_STATE: dict[str, NoticeEvent] = {
    "reauth-required": "grant.dead",
    "broken": "grant.broken",
    "idle": "grant.idle",
}
_REPORTED: frozenset[str] = frozenset(
    {"grant.dead", "grant.broken", "grant.expiring", "grant.idle"}
)


@dataclass(frozen=True, slots=True)
class LastNotice:
    event: str
    id: str
    status: str  # "pending", "sent" or "failed"
    at: float  # epoch seconds (the database's clock) when it was claimed


def last_notice(metadata: Mapping[str, Any] | None) -> LastNotice | None:
    entry = (metadata or {}).get(NOTICE_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        return LastNotice(
            str(entry["event"]), str(entry["id"]), str(entry["status"]), float(entry["at"])
        )
    except (KeyError, TypeError, ValueError):
        return None


def notice_for(
    record: TokenRecord,
    status: TokenStatus,
    *,
    db_now: float,
    consent_lifetime: float | None,
    warn_before: float,
) -> tuple[NoticeEvent, str] | None:
    """(the event to send, its message id) for this row now, or None.

    An event already sent is not sent again until the state changes; one being sent by
    another run is left alone unless that run vanished (PENDING_TIMEOUT); one that failed
    goes again with the same id.
    """
    event = _BY_STATE.get(status.state)
    if event is None and consent_lifetime is not None and record.consented_at is not None:
        dies_at = epoch(record.consented_at) + consent_lifetime
        if db_now >= dies_at - warn_before:
            event = "grant.expiring"
    last = last_notice(record.metadata)
    if event is None:
        if last is None or last.event not in _REPORTED:
            return None
        event = "grant.reconnected"  # reported before, healthy now
    if last is not None and last.event == event:
        if last.status == "sent":
            return None
        if last.status == "pending" and db_now - last.at < PENDING_TIMEOUT:
            return None
        return event, last.id
    return event, "msg_" + secrets.token_urlsafe(18)


def with_notice(
    metadata: Mapping[str, Any] | None, event: str, message_id: str, status: str, at: float
) -> dict[str, Any]:
    """The row's metadata with its last notice set."""
    data = dict(metadata or {})
    data[NOTICE_KEY] = {"event": event, "id": message_id, "status": status, "at": at}
    return data


_WHAT: dict[str, str] = {
    "grant.dead": "needs a new consent",
    "grant.broken": "cannot be used: an operator has to fix its row",
    "grant.expiring": "will stop working soon: the consent is about to expire",
    "grant.idle": "has not been used for months and will be dropped by Google",
    "grant.reconnected": "works again",
}


def payload(event: str, status: TokenStatus, *, link: str | None, at: datetime) -> dict[str, Any]:
    """The message: who, what state and why, and where the user reconnects. No secret."""
    return {
        "type": event,
        "timestamp": at.isoformat(timespec="seconds") + "Z",
        "data": {
            "user_id": status.user_id,
            "email": status.email,
            "state": status.state,
            "reason": status.problem,
            "reconnect_link": link if event != "grant.reconnected" else None,
        },
    }


def slack_text(event: str, status: TokenStatus, *, link: str | None) -> dict[str, str]:
    """The same as a Slack incoming-webhook message (its text escaped the Slack way)."""

    def escaped(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    who = escaped(f"{status.user_id} ({status.email})" if status.email else status.user_id)
    text = f"Gmail of {who} {_WHAT.get(event, event)}."
    if status.problem and event != "grant.reconnected":
        text += f" Reason: {escaped(status.problem[:300])}."
    if link and event != "grant.reconnected":
        text += f" <{escaped(link)}|Reconnect Gmail>"
    return {"text": text}


class WebhookSigner:
    """Standard Webhooks' symmetric signatures: `v1,` + base64(HMAC-SHA256(key,
    "{id}.{timestamp}.{body}")), the key given as `whsec_` + base64."""

    def __init__(self, secret: str) -> None:
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise ValueError("the webhook secret must be Standard Webhooks' whsec_<base64> form")
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError("the webhook secret is not whsec_ followed by base64") from None
        if len(key) < 24:
            raise ValueError("the webhook secret must hold at least 24 random bytes")
        self._key = key

    def __repr__(self) -> str:
        return "<WebhookSigner whsec_***>"

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signed = f"{message_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest())
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + signature.decode(),
            "content-type": "application/json",
        }


def body(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


# --- the run ---------------------------------------------------------------------------------


@dataclass
class NoticeReport:
    """What a notices run did. The lists hold (who, what) pairs, escaped."""

    checked: int = 0
    sent: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Rows that changed while being looked at (left for the next run), or whose metadata
    #: cannot be written (no notice can be recorded for them).
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class NoticeSettings:
    """Where notices go and what they say (see `gmail_token_store.notices`)."""

    url: str
    signer: WebhookSigner
    link_for: Callable[[str], str] | None = None
    slack: bool = False
    consent_lifetime: float | None = None
    warn_before: float = 86_400.0
    timeout: float = 10.0
    #: Only these users' rows (say, the grants a security event just killed); None: all.
    users: tuple[str, ...] | None = None


def send_notices(core: Core, settings: NoticeSettings) -> Flow[NoticeReport]:
    """Look at every row (or `settings.users`'); send each notice that is due, once (see
    the module docstring)."""
    report = NoticeReport()
    if settings.users is not None:
        for user_id in settings.users:
            rows = yield from once_more_if_lost(
                Query(Statement.CHECK_ROW, {"user_id": user_id}, user_id=user_id)
            )
            for row in rows:  # (none for a user with no row)
                record = core.parse(row)
                yield from _consider(
                    core, settings, report, record, db_now=row[-2], db_local_now=row[-1]
                )
        return report
    after = 0
    while True:  # the table in keyset pages, as the listings walk it: memory stays flat
        rows = yield from once_more_if_lost(
            Query(Statement.PAGE_ROWS, {"after": after, "limit": PAGE_ROWS})
        )
        for row in rows:
            record = core.parse_listed(row)
            yield from _consider(
                core, settings, report, record, db_now=row[11], db_local_now=row[12]
            )
        if len(rows) < PAGE_ROWS:
            return report
        after = rows[-1][0]


def _consider(
    core: Core,
    settings: NoticeSettings,
    report: NoticeReport,
    record: TokenRecord,
    *,
    db_now: float,
    db_local_now: float,
) -> Flow[None]:
    """Send the notice one row is due, if any."""
    status = classify(
        record, db_now=db_now, db_local_now=db_local_now, windows=core.windows, policy=core.policy
    )
    report.checked += 1
    due = notice_for(
        record,
        status,
        db_now=db_now,
        consent_lifetime=settings.consent_lifetime,
        warn_before=settings.warn_before,
    )
    if due is None:
        return
    if record.metadata is None:  # unreadable: no notice can be recorded, none is sent
        report.skipped += 1
        return
    event, message_id = due
    yield from _deliver_one(
        core, settings, report, record, status, event=event, message_id=message_id
    )


def _deliver_one(
    core: Core,
    settings: NoticeSettings,
    report: NoticeReport,
    record: TokenRecord,
    status: TokenStatus,
    *,
    event: str,
    message_id: str,
) -> Flow[None]:
    db_now = core.db_now()
    claimed = yield from Query(
        Statement.CLAIM_NOTICE,
        {
            "row_id": record.row_id,
            "version": record.version,
            "metadata": to_json(with_notice(record.metadata, event, message_id, "pending", db_now)),
        },
    )
    if not claimed:  # written since it was read (another run, a refresh): the next run
        report.skipped += 1
        return
    link = settings.link_for(status.user_id) if settings.link_for else None
    message = (
        slack_text(event, status, link=link)
        if settings.slack
        else payload(event, status, link=link, at=from_epoch(db_now))
    )
    content = body(message)
    headers = settings.signer.headers(message_id, int(core.clock.time()), content)
    why = ""
    try:
        answer: int | None = yield from Deliver(settings.url, content, headers, settings.timeout)
    except EndpointUnreachable as exc:
        answer, why = None, str(exc.cause)
    delivered = answer is not None and 200 <= answer < 300
    if answer is not None and not delivered:
        why = f"HTTP {answer}"
    yield from Query(
        Statement.MARK_NOTICE,
        {
            "row_id": record.row_id,
            "message_id": message_id,
            "status": "sent" if delivered else "failed",
        },
    )
    who = label(status)
    if delivered:
        report.sent.append((who, event))
    else:
        report.failed.append((who, f"{event}: the receiver did not take it ({why})"))
