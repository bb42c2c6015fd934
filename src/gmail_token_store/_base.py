"""What both stores share outside the flows: options, decision state, cache, hand-out,
input checks and result building. Each store adds only its shell (how it performs I/O)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from google.oauth2.credentials import Credentials

from ._core import flows
from ._core.errors import ConfigurationError, parse_user_id
from ._core.flows import NewGrant
from ._core.record import OAuthClient, TokenRecord
from ._core.state import Core
from ._core.writes import UnwritableError, to_json, unstorable
from ._handout import CheckedCache, CredentialsCache, Refresher, hand_out
from ._io.events import logger
from ._options import Settings, StoreOptions, settings_from
from ._results import RefreshResult, TokenStatus

if TYPE_CHECKING:
    from .keys import EnvelopeSealer

#: The width of the production table's robeing_id column (VARCHAR(50)).
_ROBEING_ID_MAX = 50
#: A mandatory window shorter than this is still treated as this long by handed-out
#: Credentials, so that google-auth refreshes them a little before the real end.
_MIN_HANDOUT_WINDOW = 10.0


class StoreBase:
    """The parts of TokenStore and AsyncTokenStore that do no I/O."""

    def __init__(self, options: StoreOptions) -> None:
        self._settings = settings = settings_from(options)
        self._core = Core(
            windows=settings.windows,
            http_timeout=settings.http_timeout,
            allowed_token_hosts=settings.allowed_token_hosts,
            allow_loopback_token_uri=settings.allow_loopback_token_uri,
            fallback_client=OAuthClient(settings.client_id, settings.client_secret),
            sealer=(sealer := _sealer(settings)),
        )
        #: Opens (and, unless `seal=False`, seals) rows' secrets; None: plaintext only.
        self._sealer = sealer
        self._cache = (
            CredentialsCache(ttl=settings.cache_ttl, max_entries=settings.cache_size)
            if settings.cache_ttl
            else None
        )
        self._checked = CheckedCache(max_entries=settings.cache_size)
        #: What handed-out Credentials count as expired / stale (see `_handout`).
        self._handout_windows = (
            timedelta(seconds=max(settings.mandatory_refresh_margin, _MIN_HANDOUT_WINDOW)),
            timedelta(seconds=settings.refresh_margin),
        )

    @property
    def refresh_margin(self) -> float:
        """Seconds before expiry from which a token is refreshed."""
        return self._settings.refresh_margin

    @property
    def cache_ttl(self) -> float:
        """Seconds a user's credentials are served from memory (0: no cache)."""
        return self._settings.cache_ttl

    @property
    def sealing_key_id(self) -> str | None:
        """The key this store seals what it writes with (None: it writes plaintext)."""
        sealer = self._sealer
        return sealer.sealing_key_id if sealer is not None and sealer.sealing else None

    def invalidate(self, user_id: str | uuid.UUID) -> None:
        """Forget the user's cached credentials; the next call reads the row."""
        uid = parse_user_id(user_id)
        if self._cache is not None:
            self._cache.invalidate(uid)

    def token_uri_problem(self, token_uri: str) -> str | None:
        """Why this store would refuse to send a client secret to `token_uri`, or None."""
        return self._core.policy.refusal(token_uri)

    def _describe(self, closed: bool) -> str:
        return (
            f"<{type(self).__name__} refresh_margin={self._settings.refresh_margin} "
            f"cache={'on' if self._cache else 'off'}{' closed' if closed else ''}>"
        )

    def _forget_cached(self, user_id: str) -> None:
        """The shells' `Forget` effect: the next call reads the row."""
        if self._cache is not None:
            self._cache.invalidate(user_id)
        self._checked.invalidate(user_id)

    def _hand_out(self, record: TokenRecord, refresher: Refresher) -> Credentials:
        """The Credentials for a record, kept in the cache (when on) until they are due."""
        core = self._core
        credentials = hand_out(record, refresher, self._handout_windows, core.db_clock)
        self._checked.invalidate(record.user_id)  # (this store may have just refreshed it)
        if self._cache is not None:
            self._cache.put(
                record.user_id,
                credentials,
                frozenset(record.scopes) if record.scopes is not None else None,
                seconds_left=record.seconds_left(core.db_now()),
                refresh_margin=self._settings.refresh_margin,
                now=time.monotonic(),
                record=record,
            )
        return credentials

    # --- answers from what this store read lately (`max_age`) ----------------------------

    def _recent_check(self, user_id: str, max_age: float) -> TokenStatus | None:
        """The status of the user's row as this store checked it at most `max_age` s ago
        (decided again now), or None."""
        if not _age(max_age):
            return None
        hit = self._checked.get(user_id, read_after=time.monotonic() - max_age)
        return flows.recheck(self._core, hit) if hit is not None else None

    def _checked_now(
        self, user_id: str, checked: flows.Checked, read_at: float, max_age: float
    ) -> TokenStatus:
        if max_age:
            self._checked.put(user_id, checked, read_at)
        return checked.status

    def _recent_refresh(self, user_id: str, max_age: float) -> RefreshResult | None:
        """refresh()'s answer from the cache, when the user's Credentials there were read
        at most `max_age` s ago (they are not due: the cache drops them before)."""
        if not _age(max_age) or self._cache is None:
            return None
        now = time.monotonic()
        entry = self._cache.get(user_id, now)
        if entry is None or entry.record is None or entry.read_at < now - max_age:
            return None
        return refresh_result(
            self._core, entry.record, entry.record, entry.credentials, time.time()
        )

    @staticmethod
    def _page_size_check(page_size: object) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")

    def _reseal_check(self, target: object, page_size: object) -> None:
        if target not in ("seal", "rotate", "unseal"):
            raise ValueError(f"target must be 'seal', 'rotate' or 'unseal', got {target!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        if self._sealer is None:
            raise ConfigurationError(
                "this store has no keys: give it keys (GMAIL_TOKEN_STORE_KEYS) to seal or unseal"
            )
        if target != "unseal" and not self._sealer.sealing:
            raise ConfigurationError(f"{target} needs a store that seals (seal=True)")

    def _report_lost_grants(self) -> None:
        for grant in self._core.kept.pending():
            logger.error(
                "the refreshed Gmail grant of user %s was never saved (the database did not "
                "answer) and is lost with this store; the user may have to re-authorize",
                grant.user_id,
            )

    def _forget_parent(self) -> None:
        """In a forked child: the decision state and cache, without the parent's locks."""
        self._core.after_fork()
        self._checked.after_fork()
        if self._sealer is not None:
            self._sealer.after_fork()
        if self._cache is not None:
            self._cache.after_fork()


def _sealer(settings: Settings) -> EnvelopeSealer | None:
    """The sealer the `keys` option asks for (cryptography is imported only then)."""
    if settings.keys is None:
        return None
    from .keys import EnvelopeSealer, Keyring  # noqa: PLC0415

    keys = Keyring.parse(settings.keys) if isinstance(settings.keys, str) else settings.keys
    return EnvelopeSealer(keys, sealing=settings.seal)


def new_grant(
    credentials: object, *, email: object, robeing_id: object, metadata: object
) -> NewGrant:
    """What `save` stores, checked before anything is written (ValueError, never quoting a
    value: a token or a secret may be what is wrong)."""
    if not isinstance(credentials, Credentials):
        raise ValueError("credentials must be google.oauth2.credentials.Credentials")
    if not credentials.token and not credentials.refresh_token:
        raise ValueError("credentials hold neither an access token nor a refresh token")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    if email is not None and not isinstance(email, str):
        raise ValueError("email must be a string")
    texts = {
        "the access token": credentials.token,
        "the refresh token": credentials.refresh_token,
        "the client id": credentials.client_id,
        "the client secret": credentials.client_secret,
        "the token URI": credentials.token_uri,
        "the email": email,
        "the robeing id": robeing_id if isinstance(robeing_id, str) else None,
        **{f"scope #{index}": scope for index, scope in enumerate(credentials.scopes or ())},
    }
    for what, text in texts.items():
        if text is not None and (not isinstance(text, str) or unstorable(text)):
            raise ValueError(
                f"{what} holds a character PostgreSQL cannot store (NUL or a lone surrogate) "
                "or is not a string; nothing was written"
            )
    try:
        to_json(metadata)
    except UnwritableError as exc:
        raise ValueError(f"metadata cannot be stored: {exc}; nothing was written") from None
    if robeing_id is not None and (
        not isinstance(robeing_id, str) or len(robeing_id) > _ROBEING_ID_MAX
    ):
        raise ValueError(f"robeing_id must be a string of at most {_ROBEING_ID_MAX} characters")
    return NewGrant(
        access_token=credentials.token,
        refresh_token=credentials.refresh_token,
        client_id=credentials.client_id,
        client_secret=credentials.client_secret,
        token_uri=credentials.token_uri,
        scopes=credentials.scopes,
        expiry=credentials.expiry,
    )


def _age(max_age: float) -> bool:
    """Is `max_age` (seconds) a request to answer from what was read lately?"""
    if not isinstance(max_age, int | float) or isinstance(max_age, bool) or not max_age >= 0:
        raise ValueError(f"max_age must be a number of seconds >= 0, got {max_age!r}")
    return max_age > 0


def refresh_result(
    core: Core, seen: TokenRecord, record: TokenRecord, credentials: Credentials, local_now: float
) -> RefreshResult:
    """The RefreshResult of `refresh()`: "refreshed" when the token changed."""
    assert record.access_token is not None  # noqa: S101 - a served record has one
    assert record.expiry is not None  # noqa: S101
    return RefreshResult(
        status="refreshed" if record.access_token != seen.access_token else "valid",
        user_id=record.user_id,
        email=record.email,
        expires_in=max(int(record.seconds_left(core.db_clock.db_now(local_now))), 0),
        expiry=record.expiry,
        access_token=record.access_token,
        credentials=credentials,
    )
