"""What the fake token endpoint answers (`Reply`, scripted) and records (`TokenRequest`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._accounts import FakeAccount
from ._http import Answer


class Reply(enum.Enum):
    """What the fake endpoint answers to one token request."""

    OK = "ok"
    INVALID_GRANT = "invalid_grant"  # 400: revoked / expired refresh token
    INVALID_CLIENT = "invalid_client"  # 401
    UNAUTHORIZED_CLIENT = "unauthorized_client"  # 400
    DELETED_CLIENT = "deleted_client"  # 401
    SERVER_ERROR = "server_error"  # 500, JSON body
    UNAVAILABLE = "temporarily_unavailable"  # 503, JSON body
    RATE_LIMITED = "rate_limited"  # 429, JSON body
    BAD_GATEWAY_HTML = "bad_gateway_html"  # 502, an HTML page: what a proxy says in an outage
    HANG = "hang"  # accepts the request and never answers (until release() or close())


_ERROR_ANSWERS: dict[Reply, tuple[int, str]] = {
    Reply.INVALID_GRANT: (400, "Token has been expired or revoked."),
    Reply.INVALID_CLIENT: (401, "The OAuth client was not found."),
    Reply.UNAUTHORIZED_CLIENT: (400, "Unauthorized"),
    Reply.DELETED_CLIENT: (401, "The OAuth client was deleted."),
    Reply.SERVER_ERROR: (500, "Internal error"),
    Reply.UNAVAILABLE: (503, "The service is currently unavailable."),
    Reply.RATE_LIMITED: (429, "Rate limit exceeded"),
}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request the fake endpoint received, and what it answered."""

    grant_type: str
    client_id: str | None
    refresh_token: str | None = field(repr=False)
    client_secret: str | None = field(repr=False)
    code: str | None = field(repr=False)
    reply: Reply
    received_at: float
    issued_access_token: str | None = field(default=None, repr=False)
    #: The refresh token sent back: a code exchange's (access_type=offline), or a rotation's.
    issued_refresh_token: str | None = field(default=None, repr=False)
    #: The ID token sent back (when `openid` was granted).
    issued_id_token: str | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    code_verifier: str | None = field(default=None, repr=False)
    #: The account the code or the fake's refresh token belongs to (None for other tokens).
    account: FakeAccount | None = None
    #: The scopes the answer granted, when the fake knows them.
    scopes: tuple[str, ...] | None = None


def error_answer(reply: Reply, description: str | None = None) -> Answer:
    """Google's answer for a failing reply: a JSON error, an HTML 502, or none (HANG)."""
    if reply is Reply.BAD_GATEWAY_HTML:
        return Answer(502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    if reply is Reply.HANG:
        return Answer(0)
    status, default_description = _ERROR_ANSWERS[reply]
    error = "rate_limit_exceeded" if reply is Reply.RATE_LIMITED else reply.value
    return Answer.json(
        status, {"error": error, "error_description": description or default_description}
    )
