"""``attnserve predict``, ``predict-series`` and ``models``: use a running server.

These import only httpx and the standard library (the client extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.cli.base import Commands, fail


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("ATTNSERVE_URL", "http://127.0.0.1:8000"),
        help="server URL (default: $ATTNSERVE_URL or http://127.0.0.1:8000)",
    )
    p.add_argument("--api-key", default=None, help="API key (default: $ATTNSERVE_API_KEY when set)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")


def add_parsers(sub: Commands) -> None:
    """Declare ``predict``, ``predict-series`` and ``models``."""
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


def _run_client(action: Callable[[], int]) -> int:
    """Run a client action; server and connection errors become one line and an exit code."""
    try:
        import httpx

        from service.client import JobFailed, ServerError
    except ImportError as exc:
        return fail(f"the client commands need httpx ({exc}): pip install httpx", 2)

    try:
        return action()
    except ServerError as exc:
        return fail(f"server answered {exc}", 1)
    except JobFailed as exc:
        return fail(str(exc), 1)
    except httpx.TransportError as exc:
        return fail(f"cannot reach the server: {exc}", 3)
    except (OSError, ValueError) as exc:
        return fail(str(exc), 2)


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
                    return fail(f"cancelled job {job['job_id']}", 130)
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
