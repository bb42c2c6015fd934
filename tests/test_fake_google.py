"""The fake Google in gmail_token_store.testing, over real HTTP: consent page, codes, ID tokens,
refresh-token limit, revocation, and the RISC issuer. Signatures are checked here with
cryptography against the JWKS the fake serves, as a consumer's verifier would."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

from gmail_token_store import GMAIL_SEND
from gmail_token_store.testing import (
    FakeAccount,
    FakeTokenEndpoint,
    Reply,
    RiscEvent,
    iss_sub,
    oauth_token,
)

CLIENT = "web-client.apps.googleusercontent.com"
REDIRECT = "http://127.0.0.1:8765/oauth/callback"
SCOPES = ("openid", "email", GMAIL_SEND)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(endpoint: FakeTokenEndpoint, **params: str | None) -> str:
    """An authorization request as a web flow sends it; `params` change or (None) drop one."""
    query: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "scope": " ".join(SCOPES),
        "state": "state-" + secrets.token_hex(4),
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        **params,
    }
    return endpoint.auth_uri + "?" + urlencode({k: v for k, v in query.items() if v is not None})


def redirect_query(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def exchange(endpoint: FakeTokenEndpoint, code: str, **fields: str | None) -> requests.Response:
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": CLIENT,
        "client_secret": "web-secret",
        "redirect_uri": REDIRECT,
        **fields,
    }
    data = {k: v for k, v in form.items() if v is not None}
    return requests.post(endpoint.token_uri, data=data, timeout=10)


def refresh(endpoint: FakeTokenEndpoint, refresh_token: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": CLIENT}
    return requests.post(endpoint.token_uri, data=data, timeout=10)


def grant(endpoint: FakeTokenEndpoint, **params: str | None) -> dict[str, Any]:
    """Consent with PKCE and exchange the code: the token answer."""
    verifier = secrets.token_urlsafe(48)
    url = authorization_url(
        endpoint, code_challenge=challenge_of(verifier), code_challenge_method="S256", **params
    )
    code = redirect_query(endpoint.consent(url))["code"]
    client = params.get("client_id") or CLIENT
    answer = exchange(endpoint, code, code_verifier=verifier, client_id=client)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def verified(token: str, jwks_uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of an RS256 JWT whose signature checks out under the served JWKS.

    Raises:
        LookupError: the header's kid is not in the JWKS.
        InvalidSignature: not RS256, or the signature does not verify.
    """
    header_part, claims_part, signature = token.split(".")
    header = json.loads(b64url_decode(header_part))
    if header.get("alg") != "RS256":
        raise InvalidSignature(f"alg {header.get('alg')}")
    keys = requests.get(jwks_uri, timeout=10).json()["keys"]
    [jwk] = [key for key in keys if key["kid"] == header["kid"]] or [None]
    if jwk is None:
        raise LookupError(header["kid"])
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    numbers = RSAPublicNumbers(
        int.from_bytes(b64url_decode(jwk["e"])), int.from_bytes(b64url_decode(jwk["n"]))
    )
    numbers.public_key().verify(
        b64url_decode(signature),
        f"{header_part}.{claims_part}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return header, json.loads(b64url_decode(claims_part))


class FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def inputs(self, kind: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == "input" and attrs["type"] == kind]


def read_page(url: str) -> FormReader:
    page = requests.get(url, timeout=10, allow_redirects=False)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    reader = FormReader()
    reader.feed(page.text)
    return reader


# --- accounts and the consent page ----------------------------------------------------------


def test_the_fake_has_one_account_by_default_with_a_google_shaped_id(
    endpoint: FakeTokenEndpoint,
) -> None:
    [account] = endpoint.accounts
    assert account.email == "user@gmail.com" and account.email_verified
    assert len(account.sub) == 21 and account.sub.isdigit()
    added = endpoint.add_account("ada@example.com", sub="123", email_verified=False)
    assert endpoint.accounts == (account, added) and added == FakeAccount(
        "ada@example.com", "123", False
    )
    with pytest.raises(ValueError, match="already"):
        endpoint.add_account("ADA@example.com")


def test_the_consent_page_is_a_post_form_of_accounts_ticked_scopes_and_two_decisions(
    endpoint: FakeTokenEndpoint,
) -> None:
    ada = endpoint.add_account("ada@example.com")
    reader = read_page(authorization_url(endpoint, login_hint=ada.email))

    [form] = [attrs for tag, attrs in reader.tags if tag == "form"]
    assert form["method"] == "post" and form["action"] == "/auth"
    radios = reader.inputs("radio")
    assert [(r["name"], r["value"]) for r in radios] == [
        ("account", "user@gmail.com"),
        ("account", "ada@example.com"),
    ]
    assert [r["value"] for r in radios if "checked" in r] == [ada.email]  # the login_hint's
    boxes = reader.inputs("checkbox")
    assert [(b["name"], b["value"]) for b in boxes] == [("scope", scope) for scope in SCOPES]
    assert all("checked" in box for box in boxes)
    buttons = [attrs for tag, attrs in reader.tags if tag == "button"]
    assert [(b["type"], b["name"], b["value"]) for b in buttons] == [
        ("submit", "decision", "deny"),
        ("submit", "decision", "allow"),
    ]
    assert [h["name"] for h in reader.inputs("hidden")] == ["request"]


def test_the_consent_page_escapes_what_the_request_carries(endpoint: FakeTokenEndpoint) -> None:
    hostile = '"><script>alert(1)</script>'
    page = requests.get(authorization_url(endpoint, client_id=hostile, scope=hostile), timeout=10)
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


@pytest.mark.parametrize(
    "params",
    [
        {"redirect_uri": "https://evil.example.com/cb"},
        {"redirect_uri": "ftp://127.0.0.1/cb"},
        {"redirect_uri": "http://127.0.0.1/cb#fragment"},
        {"client_id": None},
        {"scope": None},
        {"response_type": "token"},
        {"access_type": "always"},
        {"prompt": "none consent"},
        {"code_challenge": "short", "code_challenge_method": "S256"},
        {"code_challenge": "a" * 43, "code_challenge_method": "S512"},
    ],
)
def test_a_bad_authorization_request_gets_a_400_page_and_no_redirect(
    endpoint: FakeTokenEndpoint, params: dict[str, str | None]
) -> None:
    page = requests.get(authorization_url(endpoint, **params), timeout=10, allow_redirects=False)
    assert page.status_code == 400 and "Location" not in page.headers
    assert page.headers["Content-Type"].startswith("text/html")


def test_a_repeated_parameter_is_refused(endpoint: FakeTokenEndpoint) -> None:
    url = authorization_url(endpoint) + "&redirect_uri=" + "http%3A%2F%2F127.0.0.1%2Fother"
    assert requests.get(url, timeout=10, allow_redirects=False).status_code == 400


def test_allow_redirects_with_a_code_and_the_state_to_a_redirect_uri_with_a_query(
    endpoint: FakeTokenEndpoint,
) -> None:
    redirect = "http://localhost:8080/cb?tenant=a%26b"
    location = endpoint.consent(authorization_url(endpoint, redirect_uri=redirect, state="s&1"))
    assert location.startswith("http://localhost:8080/cb?")
    query = redirect_query(location)
    assert query["tenant"] == "a&b" and query["state"] == "s&1" and query["code"]
    assert query["scope"] == " ".join(SCOPES)


def test_deny_redirects_with_access_denied_and_the_state(endpoint: FakeTokenEndpoint) -> None:
    location = endpoint.consent(authorization_url(endpoint, state="xyz"), decision="deny")
    assert location.startswith(REDIRECT + "?")
    assert redirect_query(location) == {"error": "access_denied", "state": "xyz"}


def test_unticked_scopes_are_not_granted(endpoint: FakeTokenEndpoint) -> None:
    answer = grant_with(endpoint, ["openid", "email"])
    assert answer["scope"] == "openid email"
    assert endpoint.requests[-1].scopes == ("openid", "email")


def grant_with(
    endpoint: FakeTokenEndpoint, scopes: list[str], **params: str | None
) -> dict[str, Any]:
    """Consent to these of the requested scopes (no PKCE) and exchange the code."""
    location = endpoint.consent(authorization_url(endpoint, **params), scopes=scopes)
    answer = exchange(endpoint, redirect_query(location)["code"])
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_include_granted_scopes_adds_what_the_account_granted_the_client_before(
    endpoint: FakeTokenEndpoint,
) -> None:
    grant_with(endpoint, [GMAIL_SEND])
    again = grant_with(endpoint, ["openid"])
    assert again["scope"] == f"openid {GMAIL_SEND}"


def test_the_form_refuses_an_unknown_account_a_foreign_scope_and_a_second_answer(
    endpoint: FakeTokenEndpoint,
) -> None:
    with pytest.raises(ValueError, match=r"nobody@example\.com"):
        endpoint.consent(authorization_url(endpoint), account="nobody@example.com")

    def post(request_id: str, **form: Any) -> requests.Response:
        data = {"request": request_id, "decision": "allow", **form}
        return requests.post(endpoint.auth_uri, data=data, timeout=10, allow_redirects=False)

    def request_id() -> str:
        [hidden] = read_page(authorization_url(endpoint)).inputs("hidden")
        return hidden["value"] or ""

    assert post(request_id(), account="nobody@example.com").status_code == 400
    foreign = post(request_id(), account="user@gmail.com", scope=["openid", "https://x/admin"])
    assert foreign.status_code == 400
    once = request_id()
    assert post(once, account="user@gmail.com", scope="openid").status_code == 302
    assert post(once, account="user@gmail.com", scope="openid").status_code == 400
    with pytest.raises(ValueError, match="not an authorization URL"):
        endpoint.consent("https://accounts.google.com/o/oauth2/auth?client_id=x")


# --- codes, token answers, ID tokens ---------------------------------------------------------


def test_a_code_is_redeemed_once(endpoint: FakeTokenEndpoint) -> None:
    code = redirect_query(endpoint.consent(authorization_url(endpoint)))["code"]
    assert exchange(endpoint, code).status_code == 200
    again = exchange(endpoint, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert [r.reply for r in endpoint.requests] == [Reply.OK, Reply.INVALID_GRANT]


@pytest.mark.parametrize(
    "fields",
    [
        {"client_id": "other-client.apps.googleusercontent.com"},
        {"redirect_uri": "http://127.0.0.1:8765/other"},
        {"code_verifier": None},
        {"code_verifier": secrets.token_urlsafe(48)},
        {"code_verifier": "too-short"},
    ],
    ids=["other-client", "other-redirect-uri", "no-verifier", "wrong-verifier", "bad-verifier"],
)
def test_a_code_is_bound_to_its_client_redirect_uri_and_pkce_challenge(
    endpoint: FakeTokenEndpoint, fields: dict[str, str | None]
) -> None:
    verifier = secrets.token_urlsafe(48)
    url = authorization_url(
        endpoint, code_challenge=challenge_of(verifier), code_challenge_method="S256"
    )
    code = redirect_query(endpoint.consent(url))["code"]
    answer = exchange(endpoint, code, **{"code_verifier": verifier, **fields})
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    [request] = endpoint.requests
    assert request.reply is Reply.INVALID_GRANT and request.issued_access_token is None
    assert verifier not in repr(request) and code not in repr(request)


def test_without_a_challenge_no_verifier_is_needed_and_online_access_has_no_refresh_token(
    endpoint: FakeTokenEndpoint,
) -> None:
    location = endpoint.consent(authorization_url(endpoint, access_type="online"))
    answer = exchange(endpoint, redirect_query(location)["code"])
    assert answer.status_code == 200 and "refresh_token" not in answer.json()


def test_a_refresh_token_comes_the_first_time_and_then_only_with_prompt_consent(
    endpoint: FakeTokenEndpoint,
) -> None:
    assert "refresh_token" in grant(endpoint, prompt=None)
    assert "refresh_token" not in grant(endpoint, prompt=None)
    assert "refresh_token" in grant(endpoint, prompt="select_account consent")


def test_a_scripted_reply_answers_a_code_exchange_and_leaves_the_code_usable(
    endpoint: FakeTokenEndpoint,
) -> None:
    code = redirect_query(endpoint.consent(authorization_url(endpoint)))["code"]
    endpoint.script(Reply.SERVER_ERROR)
    assert exchange(endpoint, code).status_code == 500
    assert exchange(endpoint, code).status_code == 200


def test_the_id_token_verifies_against_the_served_jwks_and_carries_googles_claims(
    endpoint: FakeTokenEndpoint,
) -> None:
    ada = endpoint.add_account("ada@example.com", email_verified=False)
    answer = grant(endpoint, login_hint=ada.email, nonce="n-0S6")

    header, claims = verified(answer["id_token"], endpoint.jwks_uri)
    assert header["typ"] == "JWT" and header["kid"]
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == claims["azp"] == CLIENT
    assert claims["sub"] == ada.sub and claims["email"] == ada.email
    assert claims["email_verified"] is False and claims["nonce"] == "n-0S6"
    assert claims["exp"] - claims["iat"] == 3600
    digest = hashlib.sha256(answer["access_token"].encode()).digest()
    assert b64url_decode(claims["at_hash"]) == digest[:16]
    [request] = endpoint.requests
    assert request.account == ada and request.issued_id_token == answer["id_token"]
    assert request.code_verifier and request.redirect_uri == REDIRECT


def test_the_id_token_has_the_email_only_with_the_email_scope_and_needs_openid(
    endpoint: FakeTokenEndpoint,
) -> None:
    _, claims = verified(grant_with(endpoint, ["openid"])["id_token"], endpoint.jwks_uri)
    assert "email" not in claims and "email_verified" not in claims
    assert "id_token" not in grant_with(endpoint, [GMAIL_SEND], include_granted_scopes=None)


def test_a_refresh_of_a_token_the_fake_issued_carries_its_scopes_and_an_id_token(
    endpoint: FakeTokenEndpoint,
) -> None:
    answer = grant(endpoint)
    refreshed = refresh(endpoint, answer["refresh_token"]).json()
    assert refreshed["scope"] == " ".join(SCOPES) and "refresh_token" not in refreshed
    _, claims = verified(refreshed["id_token"], endpoint.jwks_uri)
    assert claims["sub"] == endpoint.accounts[0].sub and "nonce" not in claims


def test_past_the_refresh_token_limit_the_oldest_is_revoked_silently() -> None:
    with FakeTokenEndpoint(refresh_token_limit=2) as endpoint:
        first, second, third = (grant(endpoint)["refresh_token"] for _ in range(3))
        stale = refresh(endpoint, first)
        assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"
        assert [refresh(endpoint, token).status_code for token in (second, third)] == [200, 200]
        ada = endpoint.add_account("ada@example.com")
        grant(endpoint, login_hint=ada.email)  # another account has a limit of its own
        assert refresh(endpoint, second).status_code == 200
        assert endpoint.is_revoked(first) and not endpoint.is_revoked(second)
        assert endpoint.revoked_tokens() == []  # the limit is not a revocation request
    with pytest.raises(ValueError, match="refresh_token_limit"):
        FakeTokenEndpoint(refresh_token_limit=0)


# --- the revocation endpoint -----------------------------------------------------------------


def revoke(endpoint: FakeTokenEndpoint, token: str) -> requests.Response:
    return requests.post(endpoint.revoke_uri, data={"token": token}, timeout=10)


def test_the_revocation_endpoint_revokes_a_refresh_token_once(endpoint: FakeTokenEndpoint) -> None:
    token = grant(endpoint)["refresh_token"]
    assert revoke(endpoint, token).status_code == 200
    assert refresh(endpoint, token).json()["error"] == "invalid_grant"
    again = revoke(endpoint, token)
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"
    assert endpoint.revoked_tokens() == [token]


def test_revoking_an_access_token_revokes_its_refresh_token(endpoint: FakeTokenEndpoint) -> None:
    answer = grant(endpoint)
    assert revoke(endpoint, answer["access_token"]).status_code == 200
    assert endpoint.is_revoked(answer["refresh_token"])
    assert refresh(endpoint, answer["refresh_token"]).status_code == 400


def test_a_revocation_removes_the_whole_grant_of_that_account_and_client(
    endpoint: FakeTokenEndpoint,
) -> None:
    old, new = grant(endpoint), grant(endpoint)  # a re-consent: a second refresh token
    ada = endpoint.add_account("ada@example.com")
    other_account = grant(endpoint, login_hint=ada.email)
    other_client = grant(endpoint, client_id="other-client")
    assert revoke(endpoint, old["refresh_token"]).status_code == 200
    assert endpoint.is_revoked(new["refresh_token"]) and endpoint.is_revoked(new["access_token"])
    assert refresh(endpoint, new["refresh_token"]).json()["error"] == "invalid_grant"
    assert not endpoint.is_revoked(other_account["refresh_token"])
    assert not endpoint.is_revoked(other_client["refresh_token"])
    assert endpoint.revoked_tokens() == [old["refresh_token"]]


def test_the_revocation_endpoint_revokes_a_row_s_refresh_token_and_refuses_unknown_tokens(
    endpoint: FakeTokenEndpoint,
) -> None:
    assert revoke(endpoint, "1//test-a-row-s-refresh-token").status_code == 200
    assert refresh(endpoint, "1//test-a-row-s-refresh-token").status_code == 400
    unknown = revoke(endpoint, "ya29.never-issued")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_token"
    assert requests.post(endpoint.revoke_uri, data={}, timeout=10).status_code == 400


# --- the RISC issuer -------------------------------------------------------------------------


def test_the_risc_configuration_names_the_issuer_and_the_served_jwks(
    endpoint: FakeTokenEndpoint,
) -> None:
    config = requests.get(endpoint.risc_config_url, timeout=10).json()
    assert config["issuer"] == "https://accounts.google.com/"
    assert config["jwks_uri"] == endpoint.jwks_uri
    assert config["delivery_methods_supported"] == [
        "https://schemas.openid.net/secevent/risc/delivery-method/push"
    ]
    with FakeTokenEndpoint(risc_issuer="https://issuer.test/") as other:
        assert (
            requests.get(other.risc_config_url, timeout=10).json()["issuer"]
            == "https://issuer.test/"
        )
        _, claims = verified(
            other.security_event(RiscEvent.SESSIONS_REVOKED, None, audience=CLIENT), other.jwks_uri
        )
        assert claims["iss"] == "https://issuer.test/"


@pytest.mark.parametrize("event_type", list(RiscEvent))
def test_security_event_tokens_verify_against_the_served_jwks(
    endpoint: FakeTokenEndpoint, event_type: RiscEvent
) -> None:
    account = endpoint.accounts[0]
    token = endpoint.security_event(
        event_type, iss_sub(account), audience=CLIENT, extra={"reason": "hijacking"}
    )
    header, claims = verified(token, endpoint.jwks_uri)
    assert header == {"alg": "RS256", "kid": header["kid"]}
    assert claims["iss"] == "https://accounts.google.com/" and claims["aud"] == CLIENT
    assert len(claims["jti"]) == 32 and isinstance(claims["iat"], int) and "exp" not in claims
    assert claims["events"] == {
        event_type.value: {
            "subject": {
                "subject_type": "iss-sub",
                "iss": "https://accounts.google.com/",
                "sub": account.sub,
            },
            "reason": "hijacking",
        }
    }


def test_a_verification_event_has_a_state_and_no_subject(endpoint: FakeTokenEndpoint) -> None:
    token = endpoint.security_event(
        RiscEvent.VERIFICATION,
        None,
        audience=CLIENT,
        jti="j-1",
        iat=1508184845,
        extra={"state": "s"},
    )
    _, claims = verified(token, endpoint.jwks_uri)
    assert claims["jti"] == "j-1" and claims["iat"] == 1508184845
    assert claims["events"] == {RiscEvent.VERIFICATION.value: {"state": "s"}}


def test_forged_security_event_tokens_do_not_verify(endpoint: FakeTokenEndpoint) -> None:
    subject = iss_sub(endpoint.accounts[0])
    genuine = endpoint.security_event(RiscEvent.ACCOUNT_DISABLED, subject, audience=CLIENT)
    published_kid = json.loads(b64url_decode(genuine.split(".")[0]))["kid"]

    foreign = endpoint.security_event(
        RiscEvent.ACCOUNT_DISABLED, subject, audience=CLIENT, sign_with="foreign"
    )
    with pytest.raises(LookupError):
        verified(foreign, endpoint.jwks_uri)
    posing = endpoint.security_event(
        RiscEvent.ACCOUNT_DISABLED, subject, audience=CLIENT, sign_with="foreign", kid=published_kid
    )
    with pytest.raises(InvalidSignature):
        verified(posing, endpoint.jwks_uri)
    unsigned = endpoint.security_event(
        RiscEvent.ACCOUNT_DISABLED, subject, audience=CLIENT, sign_with="none"
    )
    assert (
        unsigned.endswith(".")
        and json.loads(b64url_decode(unsigned.split(".")[0]))["alg"] == "none"
    )
    with pytest.raises(InvalidSignature):
        verified(unsigned, endpoint.jwks_uri)


def test_a_rotated_signing_key_signs_and_the_old_one_stays_published(
    endpoint: FakeTokenEndpoint,
) -> None:
    before = endpoint.security_event(RiscEvent.SESSIONS_REVOKED, None, audience=CLIENT)
    kid = endpoint.rotate_signing_key()
    after = endpoint.security_event(RiscEvent.SESSIONS_REVOKED, None, audience=CLIENT)
    assert verified(after, endpoint.jwks_uri)[0]["kid"] == kid
    assert verified(before, endpoint.jwks_uri)[0]["kid"] != kid


def test_oauth_token_subjects_name_a_refresh_token_as_google_does() -> None:
    token = "1//0example-refresh-token"
    assert oauth_token(token, "prefix") == {
        "subject_type": "oauth_token",
        "token_type": "refresh_token",
        "token_identifier_alg": "prefix",
        "token": "1//0example-refr",
    }
    # base64(SHA-512(SHA-512(token))), as computed by
    # printf %s "$token" | openssl dgst -sha512 -binary | openssl dgst -sha512 -binary | base64
    assert oauth_token(token, "hash_base64_sha512_sha512")["token"] == (
        "hwD7kjMGQmxijW2wBkIK2TTkFdVdotgj269tNXceYXVkoMew13R3Murkuf4qAUm+OIWPs/9EDsCmiv4IClyNPA=="
    )
    assert iss_sub("1234") == {
        "subject_type": "iss-sub",
        "iss": "https://accounts.google.com/",
        "sub": "1234",
    }
