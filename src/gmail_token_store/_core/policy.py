"""Which rows may be used, and where a client secret may be sent: decisions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from .errors import InvalidTokenRecordError, MissingKeyError, ReauthRequiredError
from .record import TokenRecord

_GOOGLE_TOKEN_HOSTS = frozenset(
    {"oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com"}
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

_NO_CLIENT = (
    "no OAuth client id/secret (oauth_config, token_data, or GOOGLE_CLIENT_ID / "
    "GOOGLE_CLIENT_SECRET)"
)


def is_loopback(host: str | None) -> bool:
    return (host or "").lower() in _LOOPBACK_HOSTS


def token_uri_refusal(
    token_uri: str, allowed_hosts: frozenset[str], *, allow_loopback: bool = False
) -> str | None:
    """Return why `token_uri` must not receive a client secret, or None when it may.

    https on Google's token hosts or an allowed host; http or https on loopback only when
    the store opted in (emulators and tests). Every service that embeds the store can
    write the table, so a row must not be able to send a refresh token, its own client
    secret or the store's fallback client anywhere else (a local sidecar included).
    """
    try:
        parts = urlsplit(token_uri)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "token_uri is not a valid URL"
    if parts.scheme == "https" and (host in _GOOGLE_TOKEN_HOSTS or host in allowed_hosts):
        return None
    if parts.scheme in ("http", "https") and host in _LOOPBACK_HOSTS:
        if allow_loopback:
            return None
        return (
            f"token_uri host {host!r} is loopback, which this store does not trust "
            "(allow_loopback_token_uri=True, or GMAIL_TOKEN_STORE_ALLOW_LOOPBACK_TOKEN_URI=1, "
            "for emulators and tests only)"
        )
    return (
        f"token_uri host {host or '(none)'!r} over {parts.scheme or '(no scheme)'} is not allowed "
        "(Google's token hosts over https, or allowed_token_hosts)"
    )


class TokenUriPolicy:
    """`token_uri_refusal` for one store's allowed hosts, remembering verdicts (bounded)."""

    def __init__(self, allowed_hosts: Iterable[str], *, allow_loopback: bool = False) -> None:
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self.allow_loopback = allow_loopback
        self._verdicts: dict[str, str | None] = {}

    def refusal(self, token_uri: str) -> str | None:
        # Rows share a handful of token URIs; a dict lookup beats parsing a URL per read.
        verdicts = self._verdicts
        try:
            return verdicts[token_uri]
        except KeyError:
            if len(verdicts) > 1000:
                verdicts.clear()
            verdict = verdicts[token_uri] = token_uri_refusal(
                token_uri, self.allowed_hosts, allow_loopback=self.allow_loopback
            )
            return verdict


def unusable_because(
    record: TokenRecord, policy: TokenUriPolicy, *, refreshing: bool = True
) -> str | None:
    """Why the row cannot be used (or, with `refreshing`, refreshed), or None.

    A refused token_uri makes a row unusable even while its token is fresh: a tampered row
    is not served. A missing OAuth client only matters for a refresh.
    """
    if record.problem:
        return record.problem
    refusal = policy.refusal(record.token_uri)
    if refusal:
        return refusal
    if refreshing and record.refresh_token and not record.has_client:
        return _NO_CLIENT
    return None


def raise_if_unusable(
    record: TokenRecord, policy: TokenUriPolicy, *, refreshing: bool = True
) -> None:
    """Raise the error that says who must act, if the row cannot be used (or refreshed)."""
    if record.missing_key is not None:
        raise MissingKeyError(record.user_id, record.email, record.missing_key)
    problem = unusable_because(record, policy, refreshing=refreshing)
    if problem:
        raise InvalidTokenRecordError(record.user_id, record.email, problem)
    reason = record.reauth_reason
    if reason:
        raise ReauthRequiredError(record.user_id, record.email, reason)
