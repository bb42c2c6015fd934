"""The consent flow without a browser: `ConsentFlow` and `AsyncConsentFlow` against a real
PostgreSQL and the fake Google over HTTP, the test posting the consent page's form.

Everything a browser sends is hostile: links and states tampered with, expired, replayed,
from another browser or another secret; codes reused or swapped; accounts and scopes other
than the ones needed. Every refusal leaves the row exactly as it was.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import pytest
import requests
from psycopg.types.json import Jsonb

from gmail_token_store import GMAIL_SEND, ReauthRequiredError, TokenStore
from gmail_token_store._cli.authorize import authorize as run_authorize
from gmail_token_store._core.consent import STATE_LIFETIME, Signer, identity, new_state
from gmail_token_store.consent import (
    AsyncConsentFlow,
    ConsentDeclinedError,
    ConsentError,
    ConsentFlow,
    ConsentLinkError,
    ConsentResult,
    ConsentScopeError,
    ConsentStart,
    WrongAccountError,
)
from gmail_token_store.testing import FakeAccount, FakeTokenEndpoint

from conftest import CLIENT_ID, CLIENT_SECRET, Seeded, SeedRow
from helpers import (
    CONSENT_SECRET,
    SCRIPT,
    AsyncFacade,
    Cli,
    authorize,
    leaked,
    one_line,
    query_of,
    wait_until,
)

T = TypeVar("T")
FetchRow = Callable[[str], dict[str, Any]]
REDIRECT_URI = "http://127.0.0.1:9/auth/gmail/callback"  # never followed: the test reads it


class Consent:
    """The flow for the test's store kind (ConsentFlow, or AsyncConsentFlow through the
    facade's event loop), called the same way for both."""

    def __init__(
        self, store: TokenStore, endpoint: FakeTokenEndpoint, *, secret: str = CONSENT_SECRET
    ) -> None:
        options: dict[str, Any] = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": REDIRECT_URI,
            "secret": secret,
            "auth_uri": endpoint.auth_uri,
            "token_uri": endpoint.token_uri,
        }
        self.endpoint = endpoint
        self.facade = store if isinstance(store, AsyncFacade) else None
        self.flow: ConsentFlow | AsyncConsentFlow = (
            AsyncConsentFlow(store.store, **options)
            if isinstance(store, AsyncFacade)
            else ConsentFlow(store, **options)
        )

    def _run(self, result: T | Awaitable[T]) -> T:
        if self.facade is not None:
            return self.facade.call(cast(Awaitable[T], result))
        return cast(T, result)

    def link(self, user_id: str, **options: Any) -> str:
        return self.flow.reconnect_link(user_id, **options)

    def start(self, params: dict[str, str]) -> ConsentStart:
        return self._run(self.flow.start(params))

    def start_for(self, user_id: str, **options: Any) -> ConsentStart:
        return self._run(self.flow.start_for(user_id, **options))

    def complete(self, params: dict[str, str], binding: str | None) -> ConsentResult:
        return self._run(self.flow.complete(params, binding=binding))

    def callback(self, user_id: str, account: FakeAccount, **choice: Any) -> Callback:
        """Start from a fresh reconnect link (or `link=`) and consent on the fake's page:
        the callback's query and the browser's binding, not yet completed."""
        link = choice.pop("link", None) or self.link(user_id)
        start = self.start(query_of(link))
        location = self.endpoint.consent(start.authorization_url, account=account, **choice)
        return Callback(query_of(location), start.binding, start)


@dataclass
class Callback:
    params: dict[str, str]
    binding: str
    start: ConsentStart


@pytest.fixture
def consent(store: TokenStore, endpoint: FakeTokenEndpoint) -> Consent:
    return Consent(store, endpoint)


@pytest.fixture
def owner(endpoint: FakeTokenEndpoint) -> FakeAccount:
    return endpoint.add_account("owner@gmail.com")


@pytest.fixture
def intruder(endpoint: FakeTokenEndpoint) -> FakeAccount:
    return endpoint.add_account("intruder@gmail.com")


def verified_row(seed: SeedRow, account: FakeAccount, **columns: Any) -> Seeded:
    """A row as a verified consent of `account` left it."""
    return seed(
        email=account.email,
        metadata=Jsonb(
            {"email": account.email, "google_account_id": account.sub, "account_verified": True}
        ),
        **columns,
    )


def at_once(*calls: Callable[[], T]) -> list[T | Exception]:
    """Run each call in its own thread, released together; their results or errors."""
    barrier = threading.Barrier(len(calls))
    results: list[T | Exception] = [AssertionError("did not finish")] * len(calls)

    def run(index: int, call: Callable[[], T]) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = call()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def code_exchanges(endpoint: FakeTokenEndpoint) -> list[Any]:
    return [r for r in endpoint.requests if r.grant_type == "authorization_code"]


# --- the reconnect link ----------------------------------------------------------------------


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


LINK_TAMPERING: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {
    "signature": lambda q: {**q, "sig": _flip(q["sig"])},
    "user-id": lambda q: {**q, "user_id": str(uuid.uuid4())},
    "expiry": lambda q: {**q, "expires": str(int(q["expires"]) + 86_400)},
    "no-signature": lambda q: {key: value for key, value in q.items() if key != "sig"},
    "non-ascii-signature": lambda q: {**q, "sig": q["sig"][:-1] + "\u00e9"},
    "non-ascii-user-id": lambda q: {**q, "user_id": "\u00e9" + q["user_id"][1:]},
    "surrogate-in-user-id": lambda q: {**q, "user_id": "\udcff" + q["user_id"][1:]},
    "non-ascii-digits-in-expiry": lambda q: {**q, "expires": "\u00b2" * 10},
    "signature-of-another-purpose": lambda q: {
        **q,
        "sig": Signer(CONSENT_SECRET).sign("state", f"{q['user_id']}|{q['expires']}"),
    },
}


@pytest.mark.parametrize("tampering", LINK_TAMPERING, ids=list(LINK_TAMPERING))
def test_a_tampered_link_starts_nothing(
    consent: Consent, seed: SeedRow, endpoint: FakeTokenEndpoint, tampering: str
) -> None:
    row = seed()
    params = LINK_TAMPERING[tampering](query_of(consent.link(row.user_id)))
    with pytest.raises(ConsentLinkError):
        consent.start(params)
    assert endpoint.requests == []


def test_an_expired_link_starts_nothing(consent: Consent, seed: SeedRow) -> None:
    row = seed()
    with pytest.raises(ConsentLinkError, match="expired") as caught:
        consent.start(query_of(consent.link(row.user_id, valid_for=-1)))
    assert caught.value.user_id == row.user_id


def test_a_link_signed_with_another_secret_starts_nothing(
    store: TokenStore, endpoint: FakeTokenEndpoint, consent: Consent, seed: SeedRow
) -> None:
    row = seed()
    foreign = Consent(store, endpoint, secret="another-service-secret-" + "Z" * 20)
    with pytest.raises(ConsentLinkError, match="signature"):
        consent.start(query_of(foreign.link(row.user_id)))


def test_a_link_carries_no_secret_and_its_authorization_url_neither(
    consent: Consent, seed: SeedRow
) -> None:
    row = seed()
    link = consent.link(row.user_id)
    start = consent.start(query_of(link))
    url = start.authorization_url
    assert set(query_of(link)) == {"user_id", "expires", "sig"}
    assert leaked(link + url, {CLIENT_SECRET, CONSENT_SECRET, start.binding}) == []
    params = query_of(url)
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["access_type"] == "offline" and params["prompt"] == "consent"
    assert params["scope"].split() == [GMAIL_SEND, "openid", "email"]
    assert "binding" not in repr(start) and start.binding not in repr(start)


# --- the state: signed, bound to the browser, expiring, used once ----------------------------


@dataclass
class Started:
    """Two consents on the fake's page, not yet completed: ours (for `user_id`, by its
    account) and theirs (another user's, by another account), and the flow they ran on."""

    store: TokenStore
    consent: Consent
    user_id: str
    account: FakeAccount
    ours: Callback
    theirs: Callback


def _bad_signature(c: Started) -> Callback:
    state = _flip(c.ours.params["state"])
    return Callback({**c.ours.params, "state": state}, c.ours.binding, c.ours.start)


def _swap_payload(c: Started) -> Callback:
    """Their state's payload under our state's signature."""
    body, _, _ = c.theirs.params["state"].partition(".")
    _, _, signature = c.ours.params["state"].partition(".")
    return Callback({**c.ours.params, "state": f"{body}.{signature}"}, c.ours.binding, c.ours.start)


def _their_state_our_cookie(c: Started) -> Callback:
    """Another user's consent (a link someone forwarded), finished with our cookie."""
    return Callback(c.theirs.params, c.ours.binding, c.theirs.start)


def _no_cookie(c: Started) -> Callback:
    return Callback(c.ours.params, "", c.ours.start)


def _expired(c: Started) -> Callback:
    """A state of ours (our secret, our user) whose lifetime is over, with its binding."""
    state, _, binding = new_state(
        Signer(CONSENT_SECRET), c.user_id, now=time.time() - STATE_LIFETIME - 1
    )
    return Callback({**c.ours.params, "state": state}, binding, c.ours.start)


def _another_secret(c: Started) -> Callback:
    """A whole consent for our user run by a flow with another signing secret."""
    other = Consent(c.store, c.consent.endpoint, secret="another-service-secret-" + "Z" * 20)
    return other.callback(c.user_id, c.account)


STATE_TAMPERING: dict[str, Callable[[Started], Callback]] = {
    "signature": _bad_signature,
    "payload-swapped": _swap_payload,
    "other-users-state-with-our-cookie": _their_state_our_cookie,
    "without-the-cookie": _no_cookie,
    "non-ascii-signature": lambda c: Callback(
        {**c.ours.params, "state": c.ours.params["state"][:-1] + "\u00e9"},
        c.ours.binding,
        c.ours.start,
    ),
    "non-ascii-cookie": lambda c: Callback(c.ours.params, "\u00e9\udcff", c.ours.start),
    "expired": _expired,
    "another-secret": _another_secret,
}


@pytest.mark.parametrize("tampering", STATE_TAMPERING, ids=list(STATE_TAMPERING))
def test_a_tampered_state_is_refused_before_the_code_is_exchanged(
    store: TokenStore,
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
    tampering: str,
) -> None:
    ours = verified_row(seed, owner)
    theirs = verified_row(seed, intruder)
    before = {user: fetch_row(user) for user in (ours.user_id, theirs.user_id)}
    started = Started(
        store,
        consent,
        ours.user_id,
        owner,
        consent.callback(ours.user_id, owner),
        consent.callback(theirs.user_id, intruder),
    )
    forged = STATE_TAMPERING[tampering](started)

    with pytest.raises(ConsentLinkError):
        consent.complete(forged.params, forged.binding)

    assert code_exchanges(endpoint) == []
    assert {user: fetch_row(user) for user in before} == before
    # Nothing was used up: our own callback, as it came, still completes.
    assert consent.complete(started.ours.params, started.ours.binding).user_id == ours.user_id


def test_a_callback_completes_once(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    row = verified_row(seed, owner)
    callback = consent.callback(row.user_id, owner)
    consent.complete(callback.params, callback.binding)
    after = fetch_row(row.user_id)

    with pytest.raises(ConsentLinkError, match="already used"):
        consent.complete(callback.params, callback.binding)

    assert fetch_row(row.user_id) == after
    assert len(code_exchanges(endpoint)) == 1


def test_a_callback_replayed_on_another_replica_is_refused_by_the_single_use_code(
    make_store: Callable[..., TokenStore],
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    row = verified_row(seed, owner)
    callback = consent.callback(row.user_id, owner)
    consent.complete(callback.params, callback.binding)
    after = fetch_row(row.user_id)
    replica = Consent(make_store(), endpoint)  # the same secret; its own memory of states

    with pytest.raises(ConsentLinkError, match="authorization code"):
        replica.complete(callback.params, callback.binding)

    assert fetch_row(row.user_id) == after
    first, second = code_exchanges(endpoint)
    assert first.issued_access_token and second.issued_access_token is None


# --- what Google answers: declined, scopes, the account --------------------------------------


def test_a_declined_consent_writes_nothing(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    row = verified_row(seed, owner)
    before = fetch_row(row.user_id)
    callback = consent.callback(row.user_id, owner, decision="deny")

    with pytest.raises(ConsentDeclinedError) as caught:
        consent.complete(callback.params, callback.binding)

    assert caught.value.user_id == row.user_id and caught.value.page == "declined"
    assert fetch_row(row.user_id) == before and endpoint.requests == []


@pytest.mark.parametrize("forged_scope", [False, True], ids=["as-sent", "scope-param-forged"])
def test_a_consent_without_gmail_send_writes_nothing(
    consent: Consent,
    seed: SeedRow,
    fetch_row: FetchRow,
    owner: FakeAccount,
    forged_scope: bool,
) -> None:
    row = verified_row(seed, owner)
    before = fetch_row(row.user_id)
    callback = consent.callback(row.user_id, owner, scopes=["openid", "email"])
    assert callback.params["scope"] == "openid email"
    if forged_scope:  # the callback's `scope` is the browser's word: the token answer counts
        callback.params["scope"] = f"{GMAIL_SEND} openid email"

    with pytest.raises(ConsentScopeError) as caught:
        consent.complete(callback.params, callback.binding)

    assert caught.value.missing_scopes == (GMAIL_SEND,)
    assert fetch_row(row.user_id) == before


@pytest.mark.parametrize(
    "row_kind", ["account-id", "account-id-and-the-consenting-email", "legacy-email"]
)
def test_another_google_account_is_refused_and_writes_nothing(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
    row_kind: str,
) -> None:
    expected = owner.email
    if row_kind == "account-id":
        row = verified_row(seed, owner)
    elif row_kind == "account-id-and-the-consenting-email":
        # The address now belongs to another Google account (emails change hands): the
        # account id recorded decides.
        row = seed(
            email=intruder.email,
            metadata=Jsonb({"email": intruder.email, "google_account_id": owner.sub}),
        )
        expected = intruder.email  # what the row says the user signed in as
    else:  # a row from before consents were verified: only its email is known
        row = seed(email=owner.email)
    before = fetch_row(row.user_id)
    callback = consent.callback(row.user_id, intruder)

    with pytest.raises(WrongAccountError) as caught:
        consent.complete(callback.params, callback.binding)

    assert caught.value.user_id == row.user_id and caught.value.page == "wrong-account"
    assert caught.value.expected == expected
    assert fetch_row(row.user_id) == before
    assert len(code_exchanges(endpoint)) == 1  # refused once Google named the account


@pytest.mark.parametrize("row_kind", ["same-account-new-email", "legacy-email-in-another-case"])
def test_the_same_google_account_is_accepted(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    row_kind: str,
) -> None:
    account = endpoint.add_account("renamed@gmail.com")
    if row_kind == "same-account-new-email":
        row = seed(
            email="before-rename@gmail.com",
            metadata=Jsonb({"email": "before-rename@gmail.com", "google_account_id": account.sub}),
        )
    else:
        row = seed(email="Renamed@Gmail.com")
    callback = consent.callback(row.user_id, account)

    result = consent.complete(callback.params, callback.binding)

    assert (result.email, result.google_account_id) == (account.email, account.sub)
    assert not result.account_changed
    metadata = fetch_row(row.user_id)["metadata"]
    assert metadata["email"] == account.email and metadata["google_account_id"] == account.sub


def test_a_link_that_allows_an_account_change_connects_another_account(
    consent: Consent,
    seed: SeedRow,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
) -> None:
    row = verified_row(seed, owner)
    link = consent.link(row.user_id, allow_account_change=True)
    callback = consent.callback(row.user_id, intruder, link=link)

    result = consent.complete(callback.params, callback.binding)

    assert result.account_changed and result.email == intruder.email
    metadata = fetch_row(row.user_id)["metadata"]
    assert metadata["google_account_id"] == intruder.sub and metadata["email"] == intruder.email


def test_an_account_change_cannot_be_added_to_a_link_by_whoever_holds_it(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    row = verified_row(seed, owner)
    before = fetch_row(row.user_id)
    forwarded = consent.link(row.user_id)  # a link someone forwarded, or found in a log

    with pytest.raises(ConsentLinkError, match="signature"):
        consent.start({**query_of(forwarded), "change": "1"})

    # Nor does an account-change link lose its restriction's signature by editing it.
    changing = query_of(consent.link(row.user_id, allow_account_change=True))
    for edited in (
        {**changing, "change": "0"},
        {k: v for k, v in changing.items() if k != "change"},
    ):
        with pytest.raises(ConsentLinkError):
            consent.start(edited)
    assert fetch_row(row.user_id) == before and endpoint.requests == []


def test_a_consent_started_for_an_email_accepts_only_that_account(
    consent: Consent,
    endpoint: FakeTokenEndpoint,
    owner: FakeAccount,
    intruder: FakeAccount,
    fetch_row: FetchRow,
) -> None:
    user_id = str(uuid.uuid4())  # no row yet

    def consented(account: FakeAccount) -> ConsentResult:
        start = consent.start_for(user_id, expect_email=owner.email.upper())
        location = endpoint.consent(start.authorization_url, account=account)
        return consent.complete(query_of(location), start.binding)

    with pytest.raises(WrongAccountError):
        consented(intruder)
    with pytest.raises(AssertionError, match="no row"):
        fetch_row(user_id)
    assert consented(owner).email == owner.email
    assert fetch_row(user_id)["metadata"]["google_account_id"] == owner.sub


# --- the ID token's claims (checked without a signature: it comes straight from Google) ------

NONCE = "nonce-of-this-consent-" + "n" * 10


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": CLIENT_ID,
        "azp": CLIENT_ID,
        "sub": "110169484474386276334",
        "email": "owner@gmail.com",
        "email_verified": True,
        "nonce": NONCE,
        "iat": int(time.time()),
        "exp": int(time.time()) + 3600,
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


ID_TOKENS: dict[str, object] = {
    "another-issuer": _jwt(_claims(iss="https://accounts.example.com")),
    "another-audience": _jwt(_claims(aud="another-client")),
    "another-authorized-party": _jwt(_claims(aud=[CLIENT_ID, "x"], azp="x")),
    "expired": _jwt(_claims(exp=int(time.time()) - 3600)),
    "another-nonce": _jwt(_claims(nonce="nonce-of-another-consent")),
    "no-nonce": _jwt(_claims(nonce=None)),
    "non-ascii-nonce": _jwt(_claims(nonce="n\u00f6nce")),
    "no-account": _jwt(_claims(sub="")),
    "unverified-email": _jwt(_claims(email_verified=False)),
    "no-email": _jwt(_claims(email=None)),
    "not-a-jwt": "not-a-jwt",
    "payload-not-json": "e30.bm90IGpzb24.c2ln",
    "payload-a-list": _jwt([1, 2]),  # type: ignore[arg-type]
    "absent": None,
}


@pytest.mark.parametrize("token", ID_TOKENS, ids=list(ID_TOKENS))
def test_an_id_token_that_is_not_for_this_consent_is_refused(token: str) -> None:
    with pytest.raises(ConsentError, match="ID token") as caught:
        identity(ID_TOKENS[token], client_id=CLIENT_ID, nonce=NONCE, now=time.time(), user_id="u")
    assert type(caught.value) is ConsentError and caught.value.page == "failed"


def test_an_id_token_for_this_consent_names_its_account() -> None:
    who = identity(
        _jwt(_claims(iss="accounts.google.com", email_verified="true")),
        client_id=CLIENT_ID,
        nonce=NONCE,
        now=time.time(),
        user_id="u",
    )
    assert (who.sub, who.email) == ("110169484474386276334", "owner@gmail.com")


# --- the code exchange ----------------------------------------------------------------------


@pytest.mark.parametrize("code", ["already-redeemed", "of-another-consent"])
def test_a_code_google_refuses_writes_nothing(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    code: str,
) -> None:
    row = verified_row(seed, owner)
    first = consent.callback(row.user_id, owner)
    if code == "already-redeemed":
        consent.complete(first.params, first.binding)
    before = fetch_row(row.user_id)
    ours = consent.callback(row.user_id, owner)
    # Our state and cookie with the other consent's code (whose PKCE challenge is not ours).
    swapped = {**ours.params, "code": first.params["code"]}

    with pytest.raises(ConsentLinkError, match="authorization code"):
        consent.complete(swapped, ours.binding)

    assert fetch_row(row.user_id) == before
    assert code_exchanges(endpoint)[-1].issued_access_token is None


# --- two consents at once -------------------------------------------------------------------


@pytest.mark.parametrize("accounts", ["same-account", "two-accounts-change-allowed"])
def test_two_consents_racing_for_one_user_leave_one_grant_whole(
    make_store: Callable[..., TokenStore],
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
    accounts: str,
) -> None:
    row = verified_row(seed, owner)
    who = [owner, owner if accounts == "same-account" else intruder]
    # Two replicas (each its own store and flow) finishing two browsers' consents at once.
    replicas = [Consent(make_store(), endpoint) for _ in who]
    for _ in range(3):
        callbacks = [
            replica.callback(
                row.user_id, account, link=replica.link(row.user_id, allow_account_change=True)
            )
            for replica, account in zip(replicas, who, strict=True)
        ]
        results = at_once(
            *(
                partial(replica.complete, callback.params, callback.binding)
                for replica, callback in zip(replicas, callbacks, strict=True)
            )
        )

        assert all(isinstance(r, ConsentResult) for r in results), results  # both saved
        stored = fetch_row(row.user_id)
        [winner] = [
            r
            for r in code_exchanges(endpoint)[-2:]
            if r.issued_access_token == stored["token_data"]["access_token"]
        ]
        assert stored["token_data"]["refresh_token"] == winner.issued_refresh_token
        assert stored["metadata"]["google_account_id"] == winner.account.sub
        assert stored["metadata"]["email"] == winner.account.email
        assert stored["scopes"] == list(winner.scopes)


def test_two_consents_racing_for_a_new_user_save_one_account_and_refuse_the_other(
    make_store: Callable[..., TokenStore],
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
) -> None:
    replicas = [Consent(make_store(), endpoint) for _ in range(2)]
    for _ in range(5):
        user_id = str(uuid.uuid4())  # no row yet: whoever saves first names the account
        callbacks = [
            replica.callback(user_id, account)
            for replica, account in zip(replicas, [owner, intruder], strict=True)
        ]

        results = at_once(
            *(
                partial(replica.complete, callback.params, callback.binding)
                for replica, callback in zip(replicas, callbacks, strict=True)
            )
        )

        # As if one after the other: the second finds the first's account in the row.
        [saved] = [r for r in results if isinstance(r, ConsentResult)]
        [refused] = [r for r in results if not isinstance(r, ConsentResult)]
        assert isinstance(refused, WrongAccountError), refused
        stored = fetch_row(user_id)
        assert stored["metadata"]["google_account_id"] == saved.google_account_id
        [exchange] = [
            r
            for r in code_exchanges(endpoint)[-2:]
            if r.issued_access_token == stored["token_data"]["access_token"]
        ]
        assert exchange.account.sub == saved.google_account_id


# --- Google's limit on refresh tokens --------------------------------------------------------


def test_past_googles_refresh_token_limit_the_oldest_grant_dies_silently(
    make_store: Callable[..., TokenStore],
) -> None:
    with FakeTokenEndpoint(refresh_token_limit=2) as google:
        account = google.add_account("many-robeings@gmail.com")
        store = make_store()
        consent = Consent(store, google)
        # One Google account connected for three users of the service, one after another.
        users = [str(uuid.uuid4()) for _ in range(3)]
        for user_id in users:
            start = consent.start_for(user_id, expect_email=account.email)
            location = google.consent(start.authorization_url, account=account)
            consent.complete(query_of(location), start.binding)

        with pytest.raises(ReauthRequiredError):  # Google said nothing when it dropped it
            store.refresh(users[0], force=True)
        assert store.check(users[0]).needs_reauth
        for user_id in users[1:]:
            assert store.refresh(user_id, force=True).status == "refreshed"


# --- nothing secret in an error, a repr or a log ---------------------------------------------


def test_no_consent_error_repr_or_log_line_carries_a_secret(
    consent: Consent,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    intruder: FakeAccount,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="gmail_token_store")
    errors: list[ConsentError] = []
    rows: list[Seeded] = []
    # Each attempt by an account of its own: Google adds what an account granted before
    # (include_granted_scopes), so one account's earlier consent would fill in the next.
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("declined", {"decision": "deny"}),
        ("no-email", {"scopes": [GMAIL_SEND, "openid"]}),  # the account is not named
        ("no-gmail-send", {"scopes": ["openid", "email"]}),
        ("another-account", {}),
    ]
    for name, choice in attempts:
        account = endpoint.add_account(f"{name}@gmail.com")
        row = verified_row(seed, account)
        rows.append(row)
        callback = consent.callback(
            row.user_id, intruder if name == "another-account" else account, **choice
        )
        with pytest.raises(ConsentError) as caught:
            consent.complete(callback.params, callback.binding)
        errors.append(caught.value)
        with pytest.raises(ConsentLinkError) as replayed:
            consent.complete(callback.params, callback.binding)
        errors.append(replayed.value)
    assert [type(error).__name__ for error in errors[::2]] == [
        "ConsentDeclinedError",
        "ConsentError",
        "ConsentScopeError",
        "WrongAccountError",
    ]

    secrets = {CLIENT_SECRET, CONSENT_SECRET}
    secrets |= {token for row in rows for token in (row.access_token, row.refresh_token)}
    for request in endpoint.requests:
        secrets |= {
            value
            for value in (
                request.code_verifier,
                request.issued_access_token,
                request.issued_refresh_token,
                request.issued_id_token,
                request.code,
            )
            if value
        }
    text = "\n".join("".join(traceback.format_exception(error)) for error in errors)
    text += repr(consent.flow) + "\n".join(record.getMessage() for record in caplog.records)
    assert leaked(text, secrets) == []


# --- the authorize command -------------------------------------------------------------------


@contextmanager
def authorizing(
    cli: Cli, client_secrets: Path, user_id: str, *options: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`authorize --no-browser` running in a subprocess, and the URL it printed."""
    assert SCRIPT is not None
    process = subprocess.Popen(
        [SCRIPT, *authorize(client_secrets, user_id, *options)],
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = ""
        while not url:
            line = process.stdout.readline()  # printed at once, even though stdout is a pipe
            assert line, "authorize printed no URL"
            cli.outputs.append(line)
            match = re.search(r"https?://\S+", line)
            url = match.group(0) if match else ""
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def finished(cli: Cli, process: subprocess.Popen[str]) -> str:
    """Wait for the command; its stderr."""
    out, err = process.communicate(timeout=60)
    cli.outputs += [out, err]
    return err


@pytest.mark.parametrize("row_kind", ["account-id", "legacy-email"])
def test_authorize_refuses_another_google_account_and_writes_nothing(
    cli: Cli,
    client_secrets: Path,
    seed: SeedRow,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
    row_kind: str,
) -> None:
    row = verified_row(seed, owner) if row_kind == "account-id" else seed(email=owner.email)
    cli.secrets |= {row.access_token, row.refresh_token}
    before = fetch_row(row.user_id)
    with authorizing(cli, client_secrets, row.user_id, "--timeout", "60") as (process, url):
        assert query_of(url)["login_hint"] in (owner.sub, owner.email)
        location = endpoint.consent(url, account=intruder)
        page = requests.get(location, timeout=30)
        cli.outputs.append(page.text)
        assert page.status_code == 200 and "Gmail was not connected" in page.text
        err = finished(cli, process)

    assert process.returncode == 1
    line = one_line(err)
    assert line.startswith("gmail-token-store: error: ") and row.user_id in line
    assert intruder.email in line or "another Google account" in line
    assert fetch_row(row.user_id) == before


def test_authorize_for_a_new_user_with_email_refuses_another_account(
    cli: Cli,
    client_secrets: Path,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
    intruder: FakeAccount,
) -> None:
    user_id = str(uuid.uuid4())
    with authorizing(cli, client_secrets, user_id, "--email", owner.email) as (process, url):
        requests.get(endpoint.consent(url, account=intruder), timeout=30)
        err = finished(cli, process)

    assert process.returncode == 1
    assert f"{intruder.email} is not {owner.email}" in one_line(err)
    with pytest.raises(AssertionError, match="no row"):
        fetch_row(user_id)


def test_authorize_for_a_new_user_without_email_is_refused_before_any_consent(
    cli: Cli, client_secrets: Path, endpoint: FakeTokenEndpoint, fetch_row: FetchRow
) -> None:
    user_id = str(uuid.uuid4())

    result = cli(*authorize(client_secrets, user_id))

    assert result.returncode == 1 and result.stdout == ""  # no URL to follow
    assert f"user {user_id} has no grant yet: pass --email" in one_line(result.stderr)
    assert endpoint.requests == []
    with pytest.raises(AssertionError, match="no row"):
        fetch_row(user_id)


def test_authorize_on_a_port_in_use_fails_in_one_line(
    cli: Cli, client_secrets: Path, owner: FakeAccount
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli(
            *authorize(client_secrets, str(uuid.uuid4()), "--email", owner.email, "--port", port)
        )
    assert result.returncode == 1 and result.stdout == ""
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "--port" in line and "Traceback" not in line


def _silent(sock: socket.socket) -> None:
    """Connect and send nothing."""
    del sock


def _dripping(sock: socket.socket) -> None:
    """Send a request a byte at a time, slower than anyone reads it, until cut off."""
    for byte in b"GET /auth/gmail/callback?code=x&state=y HTTP/1.1\r\n":
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return  # the command shut the connection
        time.sleep(0.5)  # the client's own pace (not a synchronisation)


@pytest.mark.parametrize("client", [_silent, _dripping], ids=["silent", "dripping"])
def test_authorize_ends_at_its_timeout_whatever_a_local_client_does(
    cli: Cli,
    client_secrets: Path,
    owner: FakeAccount,
    client: Callable[[socket.socket], None],
) -> None:
    user_id = str(uuid.uuid4())
    with authorizing(cli, client_secrets, user_id, "--email", owner.email, "--timeout", "2") as (
        process,
        url,
    ):
        began = time.monotonic()
        port = urlsplit(query_of(url)["redirect_uri"]).port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            pesterer = threading.Thread(target=client, args=(sock,), daemon=True)
            pesterer.start()
            err = finished(cli, process)
            took = time.monotonic() - began

    assert process.returncode == 1
    assert "no authorization arrived within 2 s; nothing was stored" in one_line(err)
    assert took < 2 + 1.0, f"authorize took {took:.1f} s with --timeout 2"


def test_authorize_takes_only_its_own_callback(
    cli: Cli,
    client_secrets: Path,
    endpoint: FakeTokenEndpoint,
    fetch_row: FetchRow,
    owner: FakeAccount,
) -> None:
    user_id = str(uuid.uuid4())
    with authorizing(cli, client_secrets, user_id, "--email", owner.email) as (process, url):
        callback = urlsplit(query_of(url)["redirect_uri"])
        # A local process gets there first, with a made-up callback: it is not ours.
        forged = requests.get(
            f"http://{callback.netloc}{callback.path}?code=4/0made-up&state=made-up", timeout=30
        )
        assert forged.status_code == 404
        assert requests.get(endpoint.consent(url, account=owner), timeout=30).status_code == 200
        err = finished(cli, process)

    assert process.returncode == 0, err
    assert fetch_row(user_id)["metadata"]["google_account_id"] == owner.sub
    assert len(code_exchanges(endpoint)) == 1


@pytest.mark.parametrize("ending", ["connected", "timed-out"])
def test_authorize_leaves_the_environment_as_it_found_it(
    dsn: str,
    client_secrets: Path,
    endpoint: FakeTokenEndpoint,
    owner: FakeAccount,
    capsys: pytest.CaptureFixture[str],
    ending: str,
) -> None:
    environment = dict(os.environ)
    outcome: list[object] = []

    def run() -> None:
        with TokenStore(dsn, allow_loopback_token_uri=True) as store:
            try:
                outcome.append(
                    run_authorize(
                        store,
                        client_secrets=client_secrets,
                        user_id=str(uuid.uuid4()),
                        email=owner.email,
                        open_browser=False,
                        timeout=30 if ending == "connected" else 0.5,
                    )
                )
            except TimeoutError as exc:
                outcome.append(exc)

    command = threading.Thread(target=run)
    command.start()
    if ending == "connected":
        printed: list[str] = []

        def url_printed() -> bool:
            printed.append(capsys.readouterr().out)
            return "http" in "".join(printed)

        wait_until(url_printed)
        url = re.search(r"https?://\S+", "".join(printed))
        assert url is not None
        requests.get(endpoint.consent(url.group(0), account=owner), timeout=30)
    command.join(timeout=60)

    assert len(outcome) == 1
    assert isinstance(outcome[0], ConsentResult if ending == "connected" else TimeoutError)
    assert dict(os.environ) == environment
