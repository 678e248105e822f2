"""Raw versus in-process served throughput on a bare (GPU) machine.

Needs onnxruntime and numpy only (plus onnx for ``--fp16``), so it runs where
the web stack and GDAL are not installed, such as a lent GPU machine. For each
shipped model and precision it measures:

* the raw session per batch size (the limit), through the server's own
  ``ModelSession`` (IO binding on CUDA, CUDA graphs with ``--cuda-graph``);
* footprints served in-process: concurrent clients calling the segmentation
  task through the dynamic batcher, as ``/predict`` does after decoding (no
  HTTP, no decoding, no job store: what the runtime adds to the session).

Usage::

    python -m bench.device --fp16 --out device.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import raw
from bench.machine import machine
from service.runtime.batcher import DynamicBatcher
from service.runtime.segmentation import SegmentationTask
from service.runtime.session import CPU, CUDA, ModelSession, SessionOptions

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "shipped"
PARCELS, DATES = 10, 24


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


async def served(
    session: ModelSession, clients: int, requests: int, max_batch: int, side: int
) -> dict[str, Any]:
    """Footprints through the batcher and the segmentation task, ``clients`` at a time."""
    batcher = DynamicBatcher(
        session.manifest.ref,
        session.run,
        max_batch_size=max_batch,
        max_queue_delay_ms=5.0,
        max_queue_size=4 * clients,
    )
    task = SegmentationTask(session.manifest, batcher)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (len(session.manifest.input.bands), side, side), dtype=np.uint8)
    await batcher.start()
    latencies: list[float] = []
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            await task.predict(image, None, 120.0)
            latencies.append(time.perf_counter() - t)

    for _ in range(2):  # warm the path at every batch size the clients make
        await asyncio.gather(*(task.predict(image, None, 120.0) for _ in range(max_batch)))
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    await batcher.stop()
    return {
        "clients": clients,
        "requests": len(latencies),
        "max_batch_size": max_batch,
        "throughput_per_s": round(len(latencies) / elapsed, 3),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
    }


def measure_model(session: ModelSession, args: argparse.Namespace) -> dict[str, Any]:
    """Raw figures per batch size and, for an image model, the in-process served figure."""
    manifest = session.manifest
    side = manifest.input.tile_size or 512
    session.warmup(sizes=(side,) if manifest.task == "segmentation" else None)
    entry: dict[str, Any] = {
        "model": manifest.ref,
        "precision": session.precision,
        "provider": session.providers[0],
        "raw": [],
    }
    rng = np.random.default_rng(0)
    for b in args.batches:
        if manifest.task == "segmentation":
            images = rng.uniform(0, 255, (b, len(manifest.input.bands), side, side))
            feed, per_item = raw.image_feed(manifest, images.astype(np.float32)), 1
        else:
            feed, per_item = raw.series_feed(manifest, b, PARCELS, DATES), PARCELS
        r = raw.measure(session, feed, per_item, args.seconds, 3)
        say(f"  raw batch {b}: {r['latency_p50_ms']} ms, {r['throughput_per_s']}/s")
        entry["raw"].append(r)
    if manifest.task == "segmentation":
        s = asyncio.run(served(session, args.clients, args.requests, max(args.batches), side))
        s["of_raw_best"] = round(
            s["throughput_per_s"] / max(r["throughput_per_s"] for r in entry["raw"]), 3
        )
        say(f"  served in-process: {s['throughput_per_s']}/s, {s['of_raw_best']:.0%} of raw")
        entry["served"] = s
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    options = SessionOptions(
        providers=(CUDA, CPU),
        cuda={"cudnn_conv_algo_search": args.conv_algo_search},
        cuda_graph=args.cuda_graph,
        warmup_batch_sizes=tuple(args.batches) if args.cuda_graph else (1,),
    )
    with tempfile.TemporaryDirectory(prefix="attnserve-fp16-") as work:
        variants = [("float32", args.models)]
        if args.fp16:
            from models.half import convert_to_float16

            for path in sorted(args.models.glob("*.onnx")):
                convert_to_float16(path, Path(work) / path.name)
            variants.append(("float16", Path(work)))
        return measure_all(args, options, variants)


def measure_all(
    args: argparse.Namespace, options: SessionOptions, variants: list[tuple[str, Path]]
) -> dict[str, Any]:
    """Every model of every precision variant, with the machine and settings."""
    result: dict[str, Any] = {
        "machine": {**machine(), "gpu": gpu_name()},
        "settings": {
            "cuda_graph": args.cuda_graph,
            "cudnn_conv_algo_search": args.conv_algo_search,
            "batches": args.batches,
            "seconds_per_batch": args.seconds,
        },
        "runs": [],
    }
    for precision, directory in variants:
        for path in sorted(directory.glob("*.onnx")):
            session = ModelSession(path, options)
            say(f"{session.manifest.ref} {precision} on {session.providers[0]}")
            result["runs"].append(measure_model(session, args))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.device", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=SHIPPED, help="directory of .onnx models")
    p.add_argument("--fp16", action="store_true", help="also measure float16 copies")
    p.add_argument("--cuda-graph", action="store_true", help="capture CUDA graphs per batch")
    p.add_argument("--conv-algo-search", default="EXHAUSTIVE", help="cuDNN algorithm search")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per batch size")
    p.add_argument("--clients", type=int, default=32, help="concurrent in-process clients")
    p.add_argument("--requests", type=int, default=256, help="in-process requests in all")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = p.parse_args(argv)
    if CUDA not in ort.get_available_providers():
        say("CUDAExecutionProvider is not available: measuring on CPU")
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
