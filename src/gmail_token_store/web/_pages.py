"""The small HTML pages of the consent: what happened, and what to do next. Escaped.

Every value shown (an email, a reason) may come from the database, Google or the browser,
so it goes through `html.escape`; pages carry no script, no external resource and no
secret, and are served with headers that keep them out of caches, frames and referrers.
"""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse

#: Headers on every page: no caching (the callback URL carries a code), no framing, no
#: Referer to anything linked from the page, nothing loaded from anywhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;"
    "line-height:1.5;color:#1f2328}h1{font-size:1.4rem}a.button{display:inline-block;"
    "padding:.5rem 1rem;border-radius:.4rem;background:#1a73e8;color:#fff;text-decoration:none}"
)


def page(
    outcome: str,
    title: str,
    message: str,
    *,
    action: tuple[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    """A page for `outcome` (also its `data-outcome`, for tests and monitoring): a title, a
    sentence (plain text, escaped here), and optionally one link (label, URL)."""
    link = ""
    if action is not None:
        label, url = action
        link = f'<p><a class="button" href="{html.escape(url)}">{html.escape(label)}</a></p>'
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body data-outcome="{html.escape(outcome)}"><h1>{html.escape(title)}</h1>'
        f"<p>{html.escape(message)}</p>{link}</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)
