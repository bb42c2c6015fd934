"""The consent routes: the start route a reconnect link points at, and Google's callback.

    GET /auth/gmail/passport?user_id=...&expires=...&sig=...   (a reconnect link)
        -> 303 to Google's consent screen; a cookie binds the consent to this browser
    GET /auth/gmail/callback?code=...&state=...                 (Google's redirect)
        -> a page: connected, declined, wrong account, permission missing, link expired

The cookie holds only a random value the state carries a hash of: HttpOnly, SameSite=Lax
(it must survive the top-level redirect back from Google), Secure and `__Host-` over
https, gone after the callback. Everything checked is checked by `AsyncConsentFlow`.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..consent import (
    AsyncConsentFlow,
    ConsentDeclinedError,
    ConsentError,
    ConsentLinkError,
    ConsentScopeError,
    WrongAccountError,
)
from ..exceptions import TokenStoreError
from ._pages import PAGE_HEADERS, page

#: A fresh start offered on a page is good for this long (seconds), at most until the end of
#: the link the consent came from.
_RETRY_LINK_LIFETIME = 3600.0


def consent_routes(flow: AsyncConsentFlow) -> list[Route]:
    """The start and callback routes of `flow` (paths from its start URL and redirect URI)."""
    cookie = "__Host-gmail_consent" if flow.secure_cookies else "gmail_consent"

    async def passport(request: Request) -> Response:
        try:
            start = await flow.start(request.query_params)
        except ConsentLinkError:
            return _expired()
        except TokenStoreError:
            return _unavailable()
        response = RedirectResponse(start.authorization_url, status_code=303, headers=PAGE_HEADERS)
        response.set_cookie(
            cookie,
            start.binding,
            max_age=int(start.expires - time.time()),
            path="/",
            secure=flow.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    async def callback(request: Request) -> Response:
        response = await _completed(flow, request, request.cookies.get(cookie))
        response.delete_cookie(cookie, path="/", secure=flow.secure_cookies, httponly=True)
        return response

    return [
        Route(urlsplit(flow.start_url).path, passport, methods=["GET"]),
        Route(urlsplit(flow.redirect_uri).path, callback, methods=["GET"]),
    ]


async def _completed(  # noqa: PLR0911 - one page per outcome
    flow: AsyncConsentFlow, request: Request, binding: str | None
) -> Response:
    def retry(label: str) -> tuple[str, str] | None:
        """A fresh link, never outliving the one the consent came from (declining again and
        again must not keep a link alive); none for a consent started without a link."""
        if error is None or not error.user_id or error.retry_until is None:
            return None
        left = error.retry_until - time.time()
        if left < 0:
            return None
        valid_for = min(_RETRY_LINK_LIFETIME, left)
        return label, flow.reconnect_link(error.user_id, valid_for=valid_for)

    error: ConsentError | None = None
    try:
        result = await flow.complete(request.query_params, binding=binding)
    except ConsentLinkError:
        return _expired()
    except ConsentDeclinedError as exc:
        error = exc
        return page(
            "declined",
            "Gmail was not connected",
            "You chose not to give access to Gmail, so nothing changed. You can connect it "
            "whenever you like.",
            action=retry("Connect Gmail"),
        )
    except WrongAccountError as exc:
        error = exc
        expected = f" ({exc.expected})" if exc.expected else ""
        return page(
            "wrong-account",
            "That is another Google account",
            f"This link is for the Google account you connected before{expected}. Nothing "
            "changed. Sign in with that account on Google's page and try again.",
            action=retry("Try again"),
            status=403,
        )
    except ConsentScopeError as exc:
        error = exc
        return page(
            "permission-missing",
            "Permission to send email is missing",
            "Google's page lets you untick what you allow: sending email was not allowed, so "
            "nothing changed. Try again and leave every box ticked.",
            action=retry("Try again"),
            status=403,
        )
    except ConsentError as exc:
        error = exc
        return page(
            "failed",
            "Gmail could not be connected",
            f"Something went wrong on the way back from Google ({exc}). Nothing changed.",
            action=retry("Try again"),
            status=502,
        )
    except TokenStoreError:
        return _unavailable()
    return page(
        "connected",
        "Gmail is connected",
        f"{result.email} is connected. You can close this page.",
    )


def _expired() -> Response:
    return page(
        "expired",
        "This link has expired",
        "This link is no longer valid: it expired, was already used, or was opened in "
        "another browser. Ask for a new link, or start again from where you found it.",
        status=400,
    )


def _unavailable() -> Response:
    return page(
        "unavailable",
        "Please try again in a minute",
        "The service cannot reach its database right now. Nothing changed.",
        status=503,
    )
