"""A Flask service whose users reconnect Gmail: `ConsentFlow` used directly.

    pip install gmail-token-store flask
    export GMAIL_TOKEN_STORE_DSN=postgresql://USER:PASSWORD@HOST:5432/main_db
    export GMAIL_TOKEN_STORE_SECRET=...        # 32+ random characters, as for `serve`
    export GMAIL_TOKEN_STORE_PUBLIC_URL=https://mail.example.com
    export GOOGLE_CLIENT_SECRETS=client_secret_web.json   # a "Web application" client
    flask --app examples/flask_consent.py run

The routes are the ones `gmail_token_store.web` serves, so links made by
`gmail-token-store reconnect-link` (and the notices) and the redirect URI registered at
Google (`https://mail.example.com/auth/gmail/callback`) work with either:

    GET /auth/gmail/passport?user_id=...&expires=...&sig=...   a reconnect link
        -> 303 to Google's consent screen, with a cookie binding the consent to this browser
    GET /auth/gmail/callback?code=...&state=...                 Google's redirect back
        -> a page saying what happened and what to do next

Everything is checked by the flow (the link's signature, the state, that this browser
started it, PKCE, the ID token, the scopes, the account); the service keeps the cookie and
shows the page. Keep query strings out of the access log: a link's carries its signature,
the callback's Google's code (gunicorn: `--access-logformat '%(h)s "%(m)s %(U)s" %(s)s'`).
tests/test_flask_example.py runs this app on a real server against the fake Google.
"""

from __future__ import annotations

import html
import os
import time

from flask import Flask, Response, request

from gmail_token_store import TokenStore, TokenStoreError
from gmail_token_store.consent import (
    ConsentDeclinedError,
    ConsentError,
    ConsentFlow,
    ConsentLinkError,
    ConsentScopeError,
    WrongAccountError,
)

START_PATH = "/auth/gmail/passport"
CALLBACK_PATH = "/auth/gmail/callback"
#: No caching (the callback URL carries a code), no framing, no Referer, nothing loaded.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'",
}


def build_app(flow: ConsentFlow) -> Flask:
    """The consent routes of `flow` as a Flask app (or register them on your own)."""
    app = Flask(__name__)
    # Over https the cookie is Secure and __Host- (this host only, path /); a browser drops
    # Secure cookies on plain http, so there (a laptop, the tests) it is neither.
    cookie = "__Host-gmail_consent" if flow.secure_cookies else "gmail_consent"

    @app.get(START_PATH)
    def passport() -> Response:
        try:
            start = flow.start(request.args)
        except ConsentLinkError:
            return expired()
        except TokenStoreError:
            return unavailable()
        to_google = {**PAGE_HEADERS, "Location": start.authorization_url}
        response = Response(status=303, headers=to_google)
        response.set_cookie(
            cookie,
            start.binding,
            max_age=int(start.expires - time.time()),
            path="/",
            secure=flow.secure_cookies,
            httponly=True,
            samesite="Lax",  # it must come back with Google's top-level redirect
        )
        return response

    @app.get(CALLBACK_PATH)
    def callback() -> Response:
        response = completed(flow, request.cookies.get(cookie))
        response.delete_cookie(cookie, path="/", secure=flow.secure_cookies, httponly=True)
        return response

    return app


def completed(flow: ConsentFlow, binding: str | None) -> Response:  # noqa: PLR0911 - a page each
    """Complete the consent of this callback; the page for its outcome."""
    try:
        result = flow.complete(request.args, binding=binding)
    except ConsentLinkError:
        return expired()
    except ConsentDeclinedError:
        return page(
            "declined",
            "Gmail was not connected",
            "You chose not to give access to Gmail, so nothing changed.",
        )
    except WrongAccountError as exc:
        who = f" ({exc.expected})" if exc.expected else ""
        return page(
            "wrong-account",
            "That is another Google account",
            f"Sign in with the Google account you connected before{who}. Nothing changed.",
            status=403,
        )
    except ConsentScopeError:
        return page(
            "permission-missing",
            "Permission to send email is missing",
            "Sending email was not allowed, so nothing changed. Open the link again and leave "
            "every box ticked.",
            status=403,
        )
    except ConsentError as exc:
        return page("failed", "Gmail could not be connected", f"{exc}. Nothing changed.", 502)
    except TokenStoreError:
        return unavailable()
    return page("connected", "Gmail is connected", f"{result.email} is connected.")


def expired() -> Response:
    return page(
        "expired",
        "This link has expired",
        "It expired, was already used, or was opened in another browser. Ask for a new link.",
        status=400,
    )


def unavailable() -> Response:
    return page("unavailable", "Please try again in a minute", "Nothing changed.", status=503)


def page(outcome: str, title: str, message: str, status: int = 200) -> Response:
    """A small page; every value is escaped (an email comes from Google or the database)."""
    e = html.escape
    body = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
        f'</head><body data-outcome="{e(outcome)}"><h1>{e(title)}</h1><p>{e(message)}</p>'
        "</body></html>"
    )
    return Response(body, status=status, mimetype="text/html", headers=PAGE_HEADERS)


def create_app() -> Flask:
    """The app from the environment (what `flask --app examples/flask_consent.py` runs)."""
    store = TokenStore.from_env()
    public_url = os.environ["GMAIL_TOKEN_STORE_PUBLIC_URL"].rstrip("/")
    flow: ConsentFlow = ConsentFlow.from_client_secrets(
        store,
        os.environ["GOOGLE_CLIENT_SECRETS"],
        redirect_uri=public_url + CALLBACK_PATH,
        secret=os.environ["GMAIL_TOKEN_STORE_SECRET"],
    )
    return build_app(flow)
