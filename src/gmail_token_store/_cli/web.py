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


def risc_register(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    try:
        from ..web import register_stream  # noqa: PLC0415 - needs the web extra
    except ImportError:
        raise Failure(
            "risc-register needs the web extra: pip install 'gmail-token-store[web]'"
        ) from None
    from .._options import read_small_file  # noqa: PLC0415

    try:
        account = json.loads(read_small_file(args.service_account))
    except (OSError, ValueError):
        raise Failure(f"cannot read the service account file {args.service_account.name}") from None
    if not isinstance(account, dict):
        raise Failure(f"{args.service_account.name} is not a service account key file")
    try:
        done = register_stream(
            account, args.receiver_url, api_url=args.api_url, verify=not args.no_verify
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    except Exception as exc:  # the API's refusal: an httpx error, its status only
        status = getattr(getattr(exc, "response", None), "status_code", None)
        what = f"HTTP {status}" if status else "no answer"
        raise Failure(
            f"Google's RISC API refused the stream ({what}): check the service account's "
            "role (RISC Configuration Admin), the RISC API, and that the receiver URL is "
            "https on an authorized domain"
        ) from None
    for line in done:
        say(line)
    return EXIT_OK
