"""The ``attnserve`` command: serve, train, export and quantise models, and use a server.

One module per command group declares its commands: :mod:`~service.cli.serve`,
:mod:`~service.cli.train`, :mod:`~service.cli.export` (``export``, ``fp16``),
:mod:`~service.cli.quantize`, :mod:`~service.cli.manifest`,
:mod:`~service.cli.scene` (``scene run``: the shared queue without a server) and
:mod:`~service.cli.client` (``predict``, ``predict-series``, ``models``).
Training, export and quantisation import their heavy packages only when they
run, so ``attnserve serve`` works on an install without the ``train`` extra;
the client commands import only httpx and the standard library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import client, export, manifest, quantize, scene, serve, train


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(prog="attnserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(sub)
    train.add_parser(sub)
    export.add_parsers(sub)
    quantize.add_parser(sub)
    manifest.add_parser(sub)
    scene.add_parser(sub)
    client.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnserve`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train FAMILY` hands the rest of the line to that family's own parser.
    if train.wants(argv):
        return train.run(argv)
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return 2
    return int(args.func(args))
