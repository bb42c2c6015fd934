"""How a consuming service (skill-email) sends mail with gmail_token_store.

Not run by the tests: it needs google-api-python-client and a real Google account.
Before, skill-email asked auth-server over HTTP for a token on every send; now:

    pip install gmail-token-store google-api-python-client
    export GMAIL_TOKEN_STORE_DSN=postgresql://USER:PASSWORD@HOST:5432/main_db
"""

from __future__ import annotations

import base64
from email.message import EmailMessage
from typing import Any

from googleapiclient.discovery import build

from gmail_token_store import (
    GMAIL_SEND,
    InsufficientScopesError,
    ReauthRequiredError,
    TokenNotFoundError,
    TokenStoreError,
    get_credentials,
)


def send_mail(user_id: str, to: str, subject: str, body: str) -> dict[str, Any]:
    """Send one message as the user; return Gmail's answer (id, threadId, labelIds)."""
    # Valid for at least 5 more minutes, refreshed in-process if it was about to expire.
    # If Gmail still answers 401, googleapiclient calls credentials.refresh(), which goes
    # back through the store (row lock, persisted), not around it.
    credentials = get_credentials(user_id, scopes=[GMAIL_SEND])
    gmail = build("gmail", "v1", credentials=credentials, cache_discovery=False)
    message = EmailMessage()
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    raw = base64.urlsafe_b64encode(message.as_bytes()).decode()
    result: dict[str, Any] = gmail.users().messages().send(userId="me", body={"raw": raw}).execute()
    return result


def send_mail_for_api(user_id: str, to: str, subject: str, body: str) -> tuple[int, dict[str, Any]]:
    """The same, turned into an HTTP answer: who has to act decides the status code."""
    try:
        return 200, send_mail(user_id, to, subject, body)
    except (TokenNotFoundError, ReauthRequiredError, InsufficientScopesError) as exc:
        # The user must (re)connect Gmail with the send permission: show them the consent link.
        return 409, {"error": "gmail_consent_required", "detail": str(exc)}
    except TokenStoreError as exc:
        # retryable: Google or the database is having a moment; otherwise an operator's job.
        return (503 if exc.retryable else 500), {"error": "gmail_unavailable", "detail": str(exc)}
