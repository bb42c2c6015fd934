"""The commands of the web consent: reconnect-link and serve."""

from __future__ import annotations

import argparse

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

    serve.run(
        client_secrets=args.client_secrets,
        public_url=public_url(args.public_url),
        secret=secret(),
        dsn=args.dsn,
        host=args.host,
        port=args.port,
    )
    return EXIT_OK
