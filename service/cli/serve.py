"""``attnserve serve``: the model repository over HTTP."""

from __future__ import annotations

import argparse

from service.cli.base import Commands


def add_parser(sub: Commands) -> None:
    """Declare ``serve``."""
    p = sub.add_parser("serve", help="serve the models in the model repository over HTTP")
    p.add_argument("--host", default=None, help="bind address (default from settings)")
    p.add_argument("--port", type=int, default=None, help="port (default from settings)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.__main__ import serve

    return serve(host=args.host, port=args.port)
