"""Re-authorization: google-auth-oauthlib's installed-app flow, stored with TokenStore.save.

Asks for offline access with a consent prompt, so Google always returns a refresh token
(without `prompt=consent` a second consent returns none). The default scope is gmail.send:
the "passport" consent, which the login consent lacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import InstalledAppFlow, WSGITimeoutError

from .. import GMAIL_SEND, TokenStore
from .._core.policy import is_loopback
from ..exceptions import ConfigurationError, InsufficientScopesError


def _client_config(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read client secrets file {path}: {exc.strerror}"
        ) from None
    try:
        config = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"client secrets file {path.name} is not JSON") from None
    if not isinstance(config, dict) or not any(
        isinstance(config.get(kind), dict) for kind in ("installed", "web")
    ):
        raise ConfigurationError(
            f"client secrets file {path.name} has no 'installed' or 'web' client "
            "(download it from the Google Cloud console: OAuth client ID, Desktop app)"
        )
    return config


def authorize(
    store: TokenStore,
    *,
    client_secrets: Path,
    user_id: str,
    email: str | None,
    scopes: Sequence[str] = (GMAIL_SEND,),
    open_browser: bool,
    timeout: float,
    port: int = 0,
) -> Credentials:
    """Run the consent flow for one user and store the grant; return it.

    With `open_browser=False` the authorization URL is printed to stdout and the flow waits
    (at most `timeout` seconds) for the browser's redirect to a loopback port.

    Raises:
        ConfigurationError: unusable client secrets file or refused token_uri.
        InsufficientScopesError: the user did not grant every requested scope.
        TimeoutError: no redirect arrived in time.
    """
    config = _client_config(client_secrets)
    client = config.get("installed") or config["web"]
    token_uri = str(client.get("token_uri", ""))
    refusal = store.token_uri_problem(token_uri)
    if refusal:
        raise ConfigurationError(f"client secrets file {client_secrets.name}: {refusal}")
    if is_loopback(urlsplit(token_uri).hostname) and token_uri.startswith("http:"):
        # oauthlib refuses plain http unless told; our policy allows it on loopback only
        # (emulators and tests), and the check above has already enforced that.
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    # Google may add or drop scopes (granular consent); we compare ourselves below.
    os.environ["OAUTHLIB_RELAX_TOKEN_SCOPE"] = "1"

    flow = InstalledAppFlow.from_client_config(config, scopes=list(scopes))
    extra: dict[str, str] = {"access_type": "offline", "prompt": "consent"}
    if email:
        extra["login_hint"] = email
    try:
        credentials: Credentials = flow.run_local_server(
            host="localhost",
            port=port,
            open_browser=open_browser,
            authorization_prompt_message="Open this URL in a browser to authorize Gmail:\n{url}",
            success_message="Gmail access granted. You can close this window.",
            timeout_seconds=timeout,
            **extra,
        )
    except WSGITimeoutError:
        raise TimeoutError(f"no authorization arrived within {timeout:g} s") from None
    granted = set(credentials.granted_scopes or credentials.scopes or ())
    missing = [scope for scope in scopes if scope not in granted]
    if missing:
        raise InsufficientScopesError(user_id, email, missing)
    store.save(
        user_id, credentials, email=email, metadata={"authorized_by": "gmail-token-store authorize"}
    )
    return credentials
