"""``attnserve manifest draft|check|embed``: the manifest of an ONNX file, without torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.cli.base import Commands, fail


def add_parser(sub: Commands) -> None:
    """Declare ``manifest`` and its actions."""
    p = sub.add_parser(
        "manifest", help="draft, check or embed the manifest of an ONNX file (no torch needed)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = actions.add_parser("draft", help="print a manifest guessed from the graph, to edit")
    d.add_argument("model", type=Path, help="ONNX file")
    d.add_argument("--name", default=None, help="model name (default: from the file name)")
    d.add_argument("--version", default=None, help="model version (default: from the file name)")
    d.add_argument("--out", type=Path, default=None, help="write it here (e.g. NAME.manifest.json)")
    d.set_defaults(func=_draft)
    c = actions.add_parser(
        "check", help="run a dummy input and list every disagreement between manifest and graph"
    )
    c.add_argument("model", type=Path, help="ONNX file")
    c.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest JSON to check (default: the one the server would use: embedded, "
        "else NAME.manifest.json beside the model)",
    )
    c.set_defaults(func=_check)
    e = actions.add_parser("embed", help="write a checked manifest into the ONNX metadata")
    e.add_argument("model", type=Path, help="ONNX file")
    e.add_argument("--manifest", type=Path, required=True, help="manifest JSON to embed")
    e.add_argument("--out", type=Path, default=None, help="ONNX file to write (default: in place)")
    e.set_defaults(func=_embed)


def _draft(args: argparse.Namespace) -> int:
    from service.runtime.manifest_draft import draft_manifest

    try:
        draft = draft_manifest(args.model, name=args.name, version=args.version)
    except (OSError, ValueError) as exc:
        return fail(f"manifest draft: {exc}", 1)
    text = json.dumps(draft.manifest, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from service.runtime.manifest_check import check_file

    try:
        source, problems = check_file(args.model, args.manifest)
    except (OSError, ValueError) as exc:
        return fail(f"manifest check: {exc}", 2)
    if not problems:
        print(f"{args.model.name}: {source} agrees with the graph")
        return 0
    places = "1 place" if len(problems) == 1 else f"{len(problems)} places"
    print(f"{args.model.name}: {source} disagrees with the graph in {places}:")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def _embed(args: argparse.Namespace) -> int:
    from service.runtime.manifest import Manifest
    from service.runtime.manifest_check import check_file
    from service.runtime.manifest_embed import embed_in_file

    try:
        _, problems = check_file(args.model, args.manifest)
        if problems:
            return fail(
                f"manifest embed: {args.manifest.name} disagrees with the graph "
                f"(`attnserve manifest check` lists why): {problems[0]}",
                1,
            )
        manifest = Manifest.from_json(args.manifest.read_text(encoding="utf-8"))
        out = embed_in_file(args.model, manifest, args.out)
    except ImportError as exc:
        return fail(f"manifest embed needs the onnx package ({exc}); install onnx", 2)
    except (OSError, ValueError) as exc:
        return fail(f"manifest embed: {exc}", 2)
    print(f"wrote {out} ({manifest.ref}, task {manifest.task})")
    return 0
