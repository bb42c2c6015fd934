"""The commands of the web consent: reconnect-link and serve."""

from __future__ import annotations

import argparse
import os

from .common import DAY, EXIT_OK, Failure, public_url, say, secret


def reconnect_link_for(args: argparse.Namespace) -> int:
    from ..consent import reconnect_link  # noqa: PLC0415

    say(
        reconnect_link(
            args.user_id,
            secret=secret(),
            public_url=public_url(args.public_url),
            valid_for=args.valid_days * DAY,
        )
    )
    return EXIT_OK


def serve_app(args: argparse.Namespace) -> int:
    try:
        from . import serve  # noqa: PLC0415 - needs the web extra
    except ImportError:
        raise Failure(
            "serve needs the web extra (Starlette, uvicorn): pip install 'gmail-token-store[web]'"
        ) from None

    url = None
    if args.client_secrets is not None:
        url = public_url(args.public_url)
        secret()  # the consent signs its links and states with it: checked now
    if args.notify and not os.environ.get("GMAIL_TOKEN_STORE_WEBHOOK_SECRET"):
        raise Failure("--notify needs GMAIL_TOKEN_STORE_WEBHOOK_SECRET (whsec_...)")
    if args.client_secrets is None and not (args.risc or _api_keys_given(args)):
        raise Failure(
            "nothing to serve: give --client-secrets (the consent), API keys "
            "(GMAIL_TOKEN_STORE_API_KEYS or --api-keys-file), or --risc"
        )
    try:
        serve.run(
            client_secrets=args.client_secrets,
            public_url=url,
            dsn=args.dsn,
            host=args.host,
            port=args.port,
            workers=args.workers,
            api_keys_file=args.api_keys_file,
            risc=args.risc,
            risc_client_ids=args.risc_client_id or [],
            notify=args.notify,
            cache_ttl=args.cache_ttl,
        )
    except (ValueError, OSError) as exc:  # a malformed key list or file, a port in use
        raise Failure(f"cannot serve: {exc}") from None
    return EXIT_OK


def _api_keys_given(args: argparse.Namespace) -> bool:
    return bool(args.api_keys_file or os.environ.get("GMAIL_TOKEN_STORE_API_KEYS", "").strip())
