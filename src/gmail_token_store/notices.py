"""Notices: a signed message to a webhook when a grant needs a person, once per event.

    report = send_notices(store, "https://hooks.example/gmail", secret=os.environ[...],
                          public_url="https://svc.example", link_secret=os.environ[...])

For every grant that is dead (a new consent is needed), broken, idle for 150 days, or
whose consent is older than `consent_lifetime` (apps in Google's "Testing" status: 7
days) minus `warn_before`, one JSON message per grant and event, signed the Standard
Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`), with the user id,
email, state, reason and a fresh reconnect link; a `grant.reconnected` message when a
reported grant works again. A grant is not notified again until its state changes, also
across runs at once; a receiver that is down gets the message at the next run. What is
decided, and how, is in `_core.notices`. `gmail-token-store notify` runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._async_store import AsyncTokenStore
from ._core.errors import parse_user_id
from ._core.notices import NoticeReport, NoticeSettings, WebhookSigner
from ._core.notices import send_notices as _send_notices
from ._store import TokenStore
from .consent import LINK_LIFETIME, reconnect_link

__all__ = ["NoticeReport", "send_notices", "send_notices_async"]


def _settings(
    url: str,
    *,
    secret: str,
    public_url: str | None,
    link_secret: str | None,
    slack: bool,
    consent_lifetime: float | None,
    warn_before: float,
    link_valid_for: float,
    timeout: float,
    users: Sequence[str] | None,
) -> NoticeSettings:
    link_for: Callable[[str], str] | None = None
    if public_url and link_secret:

        def link_for(user_id: str) -> str:
            return reconnect_link(
                user_id, secret=link_secret, public_url=public_url, valid_for=link_valid_for
            )

    return NoticeSettings(
        url=url,
        signer=WebhookSigner(secret),
        link_for=link_for,
        slack=slack,
        consent_lifetime=consent_lifetime,
        warn_before=warn_before,
        timeout=timeout,
        users=tuple(parse_user_id(user) for user in users) if users is not None else None,
    )


def send_notices(
    store: TokenStore,
    url: str,
    *,
    secret: str,
    public_url: str | None = None,
    link_secret: str | None = None,
    slack: bool = False,
    consent_lifetime: float | None = None,
    warn_before: float = 86_400.0,
    link_valid_for: float = LINK_LIFETIME,
    timeout: float = 10.0,
    users: Sequence[str] | None = None,
) -> NoticeReport:
    """Send every notice that is due to the webhook at `url`; return what happened.

    Args:
        secret: the signing secret, `whsec_` + base64 (Standard Webhooks).
        public_url, link_secret: the service's URL and its consent secret: each message
            carries a fresh reconnect link (without them, none).
        slack: send a Slack incoming-webhook text instead of the JSON message.
        consent_lifetime: seconds a consent lives (7 days for an app in Google's
            "Testing" status); notices go `warn_before` seconds ahead. None: not checked.
        timeout: seconds per delivery.
        users: only these users' grants (None: every row).

    Raises:
        ValueError: a secret that is not `whsec_` + base64 of at least 24 bytes.
        DatabaseUnavailableError, ConfigurationError: as the store's other calls.
    """
    settings = _settings(
        url,
        secret=secret,
        public_url=public_url,
        link_secret=link_secret,
        slack=slack,
        consent_lifetime=consent_lifetime,
        warn_before=warn_before,
        link_valid_for=link_valid_for,
        timeout=timeout,
        users=users,
    )
    return store._run(_send_notices(store._core, settings))  # noqa: SLF001


async def send_notices_async(
    store: AsyncTokenStore,
    url: str,
    *,
    secret: str,
    public_url: str | None = None,
    link_secret: str | None = None,
    slack: bool = False,
    consent_lifetime: float | None = None,
    warn_before: float = 86_400.0,
    link_valid_for: float = LINK_LIFETIME,
    timeout: float = 10.0,
    users: Sequence[str] | None = None,
) -> NoticeReport:
    """As `send_notices`, for an AsyncTokenStore."""
    settings = _settings(
        url,
        secret=secret,
        public_url=public_url,
        link_secret=link_secret,
        slack=slack,
        consent_lifetime=consent_lifetime,
        warn_before=warn_before,
        link_valid_for=link_valid_for,
        timeout=timeout,
        users=users,
    )
    return await store._run(_send_notices(store._core, settings))  # noqa: SLF001
