"""The ``attnserve`` command: serve, train and export models.

Training and export import torch lazily, so ``attnserve serve`` works on an
install without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

TRAINERS = {"footprints": "models.train.footprints", "crops": "models.train.crops"}


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the models in the model repository over HTTP")
    p.add_argument("--host", default=None, help="bind address (default from settings)")
    p.add_argument("--port", type=int, default=None, help="port (default from settings)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.__main__ import serve

    return serve(host=args.host, port=args.port)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train a model (needs the train extra)")
    families = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family, module_name in TRAINERS.items():
        fp = families.add_parser(family, help=f"train the {family} model")
        # Arguments are declared by the trainer module; importing it pulls torch,
        # so only the chosen family's module is imported at parse time.
        fp.set_defaults(trainer=module_name)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX with its manifest")
    p.add_argument("checkpoint", type=Path, help="checkpoint written by `attnserve train`")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--name", default=None, help="model name (default: from the checkpoint)")
    p.add_argument("--version", default=None, help="model version (default: from the checkpoint)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from models.export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, name=args.name, version=args.version)
    print(f"wrote {args.out} ({manifest.ref}, task {manifest.task})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(prog="attnserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_train(sub)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnserve`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train FAMILY` hands the rest of the line to that family's own parser.
    if len(argv) >= 2 and argv[0] == "train" and argv[1] in TRAINERS:
        trainer = importlib.import_module(TRAINERS[argv[1]])
        tp = argparse.ArgumentParser(prog=f"attnserve train {argv[1]}")
        trainer.add_arguments(tp)
        return int(trainer.run(tp.parse_args(argv[2:])))
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
