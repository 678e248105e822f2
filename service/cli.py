"""The ``attnserve`` command: serve, train and export models, and use a server.

Training and export import torch lazily, so ``attnserve serve`` works on an
install without the ``train`` extra; the client commands (``predict``,
``predict-series``, ``models``) import only httpx and the standard library.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _export(args: argparse.Namespace) -> int:
    if args.module is not None:
        return _export_module(args)
    if args.checkpoint is None:
        return _fail("export: give a checkpoint, or --module pkg.mod:factory", 2)
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
            return _fail("export: give --input NAME=DIMS for each input of the module", 2)
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
        return _fail(f"export: {exc}", 1)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.out} and its draft manifest {sidecar_path(args.out)}")
    return 0


def _add_fp16(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fp16", help="write a half-precision copy of an exported model (for GPU serving)"
    )
    p.add_argument("model", type=Path, help="ONNX file written by `attnserve export`")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.set_defaults(func=_fp16)


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


def _add_manifest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "manifest", help="draft, check or embed the manifest of an ONNX file (no torch needed)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = actions.add_parser("draft", help="print a manifest guessed from the graph, to edit")
    d.add_argument("model", type=Path, help="ONNX file")
    d.add_argument("--name", default=None, help="model name (default: from the file name)")
    d.add_argument("--version", default=None, help="model version (default: from the file name)")
    d.add_argument("--out", type=Path, default=None, help="write it here (e.g. NAME.manifest.json)")
    d.set_defaults(func=_manifest_draft)
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
    c.set_defaults(func=_manifest_check)
    e = actions.add_parser("embed", help="write a checked manifest into the ONNX metadata")
    e.add_argument("model", type=Path, help="ONNX file")
    e.add_argument("--manifest", type=Path, required=True, help="manifest JSON to embed")
    e.add_argument("--out", type=Path, default=None, help="ONNX file to write (default: in place)")
    e.set_defaults(func=_manifest_embed)


def _manifest_draft(args: argparse.Namespace) -> int:
    from service.runtime.manifest_draft import draft_manifest

    try:
        draft = draft_manifest(args.model, name=args.name, version=args.version)
    except (OSError, ValueError) as exc:
        return _fail(f"manifest draft: {exc}", 1)
    text = json.dumps(draft.manifest, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for note in draft.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _manifest_check(args: argparse.Namespace) -> int:
    from service.runtime.manifest_check import check_file

    try:
        source, problems = check_file(args.model, args.manifest)
    except (OSError, ValueError) as exc:
        return _fail(f"manifest check: {exc}", 2)
    if not problems:
        print(f"{args.model.name}: {source} agrees with the graph")
        return 0
    places = "1 place" if len(problems) == 1 else f"{len(problems)} places"
    print(f"{args.model.name}: {source} disagrees with the graph in {places}:")
    for problem in problems:
        print(f"  - {problem}")
    return 1


def _manifest_embed(args: argparse.Namespace) -> int:
    from service.runtime.manifest import Manifest
    from service.runtime.manifest_check import check_file
    from service.runtime.manifest_embed import embed_in_file

    try:
        _, problems = check_file(args.model, args.manifest)
        if problems:
            return _fail(
                f"manifest embed: {args.manifest.name} disagrees with the graph "
                f"(`attnserve manifest check` lists why): {problems[0]}",
                1,
            )
        manifest = Manifest.from_json(args.manifest.read_text(encoding="utf-8"))
        out = embed_in_file(args.model, manifest, args.out)
    except ImportError as exc:
        return _fail(f"manifest embed needs the onnx package ({exc}); install onnx", 2)
    except (OSError, ValueError) as exc:
        return _fail(f"manifest embed: {exc}", 2)
    print(f"wrote {out} ({manifest.ref}, task {manifest.task})")
    return 0


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("ATTNSERVE_URL", "http://127.0.0.1:8000"),
        help="server URL (default: $ATTNSERVE_URL or http://127.0.0.1:8000)",
    )
    p.add_argument("--api-key", default=None, help="API key (default: $ATTNSERVE_API_KEY when set)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")


def _add_client(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="predict a GeoTIFF scene on a server, download results")
    p.add_argument("scene", type=Path, help="GeoTIFF to upload")
    p.add_argument("--model", required=True, help="model name or name:version")
    p.add_argument("--out", type=Path, required=True, help="directory for the results")
    p.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="ask for an asynchronous job (the server also decides so for large scenes)",
    )
    p.add_argument("--plain-progress", action="store_true", help="no tqdm, a plain text bar")
    _client_options(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("predict-series", help="classify parcels' series from CSV or JSON")
    p.add_argument(
        "series",
        type=Path,
        help="CSV (columns id,date and one per band, e.g. B2..B12; optional valid) "
        "or JSON (the /predict body)",
    )
    p.add_argument("--model", required=True, help="model name or name:version")
    p.add_argument("--out", type=Path, default=None, help="write the full JSON answer here")
    _client_options(p)
    p.set_defaults(func=_predict_series)

    p = sub.add_parser("models", help="list the models a server serves")
    _client_options(p)
    p.set_defaults(func=_models)


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    return Client(args.server, api_key=args.api_key, timeout_s=args.timeout)


def _fail(message: str, code: int = 1) -> int:
    print(f"attnserve: {message}", file=sys.stderr)
    return code


def _run_client(action: Callable[[], int]) -> int:
    """Run a client action; server and connection errors become one line and an exit code."""
    try:
        import httpx

        from service.client import JobFailed, ServerError
    except ImportError as exc:
        return _fail(f"the client commands need httpx ({exc}): pip install httpx", 2)

    try:
        return action()
    except ServerError as exc:
        return _fail(f"server answered {exc}", 1)
    except JobFailed as exc:
        return _fail(str(exc), 1)
    except httpx.TransportError as exc:
        return _fail(f"cannot reach the server: {exc}", 3)
    except (OSError, ValueError) as exc:
        return _fail(str(exc), 2)


def _predict(args: argparse.Namespace) -> int:
    def action() -> int:
        from service.client import progress_bar

        with _client(args) as client:
            job = client.predict_image(args.scene, args.model, async_=args.async_)
            if job.get("state", "done") != "done":
                print(f"job {job['job_id']} {job['state']}", file=sys.stderr)
                bar = progress_bar(args.scene.name, plain=args.plain_progress)
                try:
                    job = client.wait(job, on_progress=bar)
                except KeyboardInterrupt:
                    client.cancel(job["job_id"])
                    bar.close()
                    return _fail(f"cancelled job {job['job_id']}", 130)
                bar.close()
            files = client.save_artefacts(job, args.out, args.scene.stem)
        for name, path in files.items():
            print(f"{name}\t{path}")
        return 0

    return _run_client(action)


def _predict_series(args: argparse.Namespace) -> int:
    def action() -> int:
        from service.client import read_series_csv, series_table

        with _client(args) as client:
            if args.series.suffix.lower() == ".csv":
                bands = client.model(args.model)["input"]["bands"]
                request = read_series_csv(args.series, args.model, bands)
            else:
                request = json.loads(args.series.read_text())
                request["model"] = args.model
            answer = client.predict_series(request)
        for line in series_table(answer):
            print(line)
        if args.out is not None:
            args.out.write_text(json.dumps(answer, indent=2))
        return 0

    return _run_client(action)


def _models(args: argparse.Namespace) -> int:
    def action() -> int:
        with _client(args) as client:
            models = client.models()
        for m in models:
            layers = ", ".join(m.get("attention_layers", []))
            print(f"{m['name']}\t{m['latest']}\t{m['task']}\tattention: {layers}")
        return 0

    return _run_client(action)


def build_parser() -> argparse.ArgumentParser:
    """The top-level argument parser."""
    parser = argparse.ArgumentParser(prog="attnserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_train(sub)
    _add_export(sub)
    _add_fp16(sub)
    _add_manifest(sub)
    _add_client(sub)
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
