"""``attnserve export`` and ``attnserve fp16``: write a servable ONNX file.

``export`` turns a training checkpoint, or any PyTorch module whose attention
is captured by forward hooks, into an ONNX file with its manifest (needs the
train extra); ``fp16`` writes a half-precision copy of one (needs onnx).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.base import Commands, fail


def add_parsers(sub: Commands) -> None:
    """Declare ``export`` and ``fp16``."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint, or any PyTorch module with captured attention, to ONNX",
    )
    p.add_argument(
        "checkpoint", type=Path, nargs="?", help="checkpoint written by `attnserve train`"
    )
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--name", default=None, help="model name (default: checkpoint or file name)")
    p.add_argument("--version", default=None, help="model version (default: as the name)")
    p.add_argument(
        "--module",
        default=None,
        help="pkg.mod:factory returning a torch.nn.Module, or (module, {name: example input})",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        help="example input NAME=2x3x64x64 (or NAME=1x12:bool), in forward's order; repeatable",
    )
    p.add_argument(
        "--capture",
        action="append",
        default=[],
        help="NAME=path.to.submodule (or path[i] for a tuple's element): an extra output; "
        "repeatable",
    )
    p.add_argument(
        "--output",
        action="append",
        default=[],
        help="name of the module's own outputs, prediction first; repeatable",
    )
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "fp16", help="write a half-precision copy of an exported model (for GPU serving)"
    )
    p.add_argument("model", type=Path, help="ONNX file written by `attnserve export`")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.set_defaults(func=_fp16)


def _export(args: argparse.Namespace) -> int:
    if args.module is not None:
        return _export_module(args)
    if args.checkpoint is None:
        return fail("export: give a checkpoint, or --module pkg.mod:factory", 2)
    from models.export import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, args.out, name=args.name, version=args.version)
    print(f"wrote {args.out} ({manifest.ref}, task {manifest.task})")
    return 0


def _export_module(args: argparse.Namespace) -> int:
    from models.export_any import example_input, export_with_attention, load_factory
    from service.runtime.manifest import sidecar_path

    try:
        made = load_factory(args.module)
        model, inputs = made if isinstance(made, tuple) else (made, {})
        inputs = dict(example_input(s) for s in args.input) or inputs
        if not inputs:
            return fail("export: give --input NAME=DIMS for each input of the module", 2)
        draft = export_with_attention(
            model,
            inputs,
            args.out,
            args.capture,
            output_names=args.output or None,
            name=args.name,
            version=args.version,
        )
    except (ImportError, AttributeError, OSError, ValueError) as exc:
        return fail(f"export: {exc}", 1)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out} and its draft manifest {sidecar_path(args.out)}")
    return 0


def _fp16(args: argparse.Namespace) -> int:
    try:
        from models.half import convert_to_float16
    except ImportError as exc:
        print(f"attnserve fp16 needs the onnx package ({exc}); install onnx", file=sys.stderr)
        return 1
    try:
        manifest = convert_to_float16(args.model, args.out)
    except (OSError, ValueError) as exc:
        print(f"attnserve fp16: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({manifest.ref}, float16 inside, float32 inputs and outputs)")
    return 0
