"""``attnserve serve``: the model repository over HTTP."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.base import Commands, fail


def add_parser(sub: Commands) -> None:
    """Declare ``serve``.

    The underscore spellings are those of KServe's model servers' arguments, so a
    ServingRuntime may pass ``--model_name={{.Name}} --model_dir=/mnt/models --http_port=8080``.
    """
    p = sub.add_parser("serve", help="serve the models in the model repository over HTTP")
    p.add_argument("--host", default=None, help="bind address (default from settings)")
    p.add_argument(
        "--port", "--http-port", "--http_port", type=int, default=None,
        help="port (default from settings)",
    )  # fmt: skip
    p.add_argument(
        "--model-dir", "--model_dir", type=Path, default=None,
        help="the model repository: a directory of .onnx files (default from settings)",
    )  # fmt: skip
    p.add_argument(
        "--model-name", "--model_name", default=None,
        help="serve the directory's one model under this name (KServe: the InferenceService's)",
    )  # fmt: skip
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.__main__ import serve

    try:
        return serve(
            host=args.host, port=args.port, model_dir=args.model_dir, model_name=args.model_name
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return fail(f"invalid settings: {problems}", 2)
