"""An asyncio service that sends Gmail with gmail_token_store: FastAPI on uvicorn.

The AsyncTokenStore lives for the application's lifespan; a request awaits valid
credentials (never blocking the event loop) and sends through googleapiclient, which is
synchronous, in Starlette's threadpool. If Gmail answers 401, googleapiclient calls
`credentials.refresh()` in that worker thread, and the refresh goes back through the store
(row lock, persisted) on the application's event loop.

    pip install gmail-token-store fastapi uvicorn google-api-python-client
    export GMAIL_TOKEN_STORE_DSN=postgresql://USER:PASSWORD@HOST:5432/main_db
    uvicorn --app-dir examples fastapi_service:app

GMAIL_API_ENDPOINT points googleapiclient elsewhere than Google (the tests use a fake).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from typing import Any

import google.auth.exceptions
from fastapi import FastAPI, HTTPException, Request
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from gmail_token_store import (
    GMAIL_SEND,
    AsyncTokenStore,
    InsufficientScopesError,
    ReauthRequiredError,
    TokenNotFoundError,
    TokenStoreError,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncTokenStore.from_env() as store:
        app.state.tokens = store
        yield


app = FastAPI(lifespan=lifespan)


class Mail(BaseModel):
    to: str
    subject: str
    body: str


def send_with_googleapiclient(credentials: Credentials, mail: Mail) -> dict[str, Any]:
    """The synchronous part: googleapiclient, run in a worker thread."""
    endpoint = os.environ.get("GMAIL_API_ENDPOINT")
    gmail = build(
        "gmail",
        "v1",
        credentials=credentials,
        cache_discovery=False,
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )
    message = EmailMessage()
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message.set_content(mail.body)
    raw = base64.urlsafe_b64encode(message.as_bytes()).decode()
    result: dict[str, Any] = gmail.users().messages().send(userId="me", body={"raw": raw}).execute()
    return result


def _answer(error: TokenStoreError) -> HTTPException:
    """Who has to act decides the status code."""
    if isinstance(error, TokenNotFoundError | ReauthRequiredError | InsufficientScopesError):
        # The user must (re)connect Gmail with the send permission: show the consent link.
        return HTTPException(409, {"error": "gmail_consent_required", "detail": str(error)})
    # retryable: Google or the database is having a moment; otherwise an operator's job.
    return HTTPException(503 if error.retryable else 500, {"error": "gmail_unavailable"})


@app.post("/users/{user_id}/send")
async def send(user_id: str, mail: Mail, request: Request) -> dict[str, Any]:
    store: AsyncTokenStore = request.app.state.tokens
    try:
        credentials = await store.get_credentials(user_id, scopes=[GMAIL_SEND])
        return await run_in_threadpool(send_with_googleapiclient, credentials, mail)
    except TokenStoreError as exc:
        raise _answer(exc) from exc
    except google.auth.exceptions.RefreshError as exc:  # a refresh on a 401, in the thread
        if isinstance(exc.__cause__, TokenStoreError):
            raise _answer(exc.__cause__) from exc
        raise
