"""The limit: a bare ONNX Runtime session, no server, on the same machine and settings.

Feeds are built from the manifest's ``tensors`` list, so a model that gains an
input (e.g. ``band_mean``) is still fed everything it declares.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.manifest import Manifest
from service.runtime.session import ModelSession

Feed = dict[str, np.ndarray]


def image_feed(manifest: Manifest, images: np.ndarray) -> Feed:
    """A segmentation feed for ``(B, C, H, W)`` float32 images.

    The first tensor takes the images; a ``(batch, bands)`` tensor (``band_mean``)
    takes each image's per-band mean.
    """
    feed: Feed = {}
    for i, tensor in enumerate(manifest.tensors):
        if i == 0:
            feed[tensor.name] = np.ascontiguousarray(images, dtype=np.float32)
        elif len(tensor.shape) == 2:
            feed[tensor.name] = images.mean(axis=(2, 3), dtype=np.float64).astype(tensor.dtype)
        else:
            raise ValueError(f"the benchmark does not know how to feed {tensor.name!r}")
    return feed


def series_feed(manifest: Manifest, requests: int, parcels: int, dates: int, seed: int = 0) -> Feed:
    """A temporal feed: ``requests x parcels`` series of ``dates`` dates, as the server feeds."""
    rng = np.random.default_rng(seed)
    n = requests * parcels
    bands = len(manifest.input.bands)
    series_name, days_name, valid_name = (t.name for t in manifest.tensors)
    days = np.sort(rng.choice(np.arange(1, 366), dates, replace=False)).astype(np.float32)
    return {
        series_name: rng.uniform(200, 6000, (n, dates, bands)).astype(np.float32),
        days_name: np.ascontiguousarray(np.broadcast_to(days, (n, dates))),
        valid_name: rng.random((n, dates)) > 0.2,
    }


def source_tiles(path: Path, size: int, count: int) -> np.ndarray:
    """``(count, C, size, size)`` float32 windows of a real image (reflected where it ends)."""
    import rasterio  # here, so that the rest runs with onnxruntime and numpy alone

    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
    _, h, w = data.shape
    if size > min(h, w):
        pad = size - min(h, w)
        data = np.pad(data, ((0, 0), (0, pad), (0, pad)), mode="reflect")
        _, h, w = data.shape
    tiles = []
    rng = np.random.default_rng(0)
    for _ in range(count):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        tiles.append(data[:, y : y + size, x : x + size])
    return np.stack(tiles)


def read_window(path: Path, y: int, x: int, size: int) -> np.ndarray:
    """One ``(C, size, size)`` window of a file, boundless reads reflected as the server does."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        h, w = ds.height, ds.width
        y0, y1, x0, x1 = max(0, y), min(h, y + size), max(0, x), min(w, x + size)
        data = ds.read(window=Window(x0, y0, x1 - x0, y1 - y0)).astype(np.float32)
    pads = ((0, 0), (y0 - y, y + size - y1), (x0 - x, x + size - x1))
    return np.pad(data, pads, mode="reflect") if any(a or b for a, b in pads) else data


def time_runs(
    run: Callable[[], Any], min_time_s: float, min_runs: int, warmup: int = 1
) -> list[float]:
    """Seconds per call of ``run``, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times


def measure(
    session: ModelSession, feed: Feed, rows_per_item: int, min_time_s: float, min_runs: int
) -> dict[str, Any]:
    """Latency and throughput of one feed (batch) through the session."""
    times = time_runs(lambda: session.run(feed), min_time_s, min_runs)
    rows = next(iter(feed.values())).shape[0]
    items = rows // rows_per_item
    median = statistics.median(times)
    return {
        "batch": items,
        "rows": rows,
        "runs": len(times),
        "latency_p50_ms": round(median * 1000, 2),
        "latency_min_ms": round(min(times) * 1000, 2),
        "latency_mean_ms": round(statistics.fmean(times) * 1000, 2),
        "throughput_per_s": round(items / statistics.fmean(times), 3),
    }


def measure_side_by_side(
    sessions: list[ModelSession], feed: Feed, rows_per_item: int, seconds: float
) -> dict[str, Any]:
    """Throughput of several sessions each running ``feed`` over and over at once.

    The limit for a server that runs batches side by side (CPU instances).
    """
    items = next(iter(feed.values())).shape[0] // rows_per_item
    counts = [0] * len(sessions)
    for session in sessions:
        session.run(feed)  # warm
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            sessions[i].run(feed)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "sessions": len(sessions),
        "threads_each": sessions[0].options.intra_op_threads,
        "batch": items,
        "runs": sum(counts),
        "throughput_per_s": round(sum(counts) * items / elapsed, 3),
    }


class _ShapeProbe:
    """Stands in for a batcher: records the feed and answers zeros of the output shapes."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.feed: Feed = {}

    async def submit(self, feed: Feed, timeout_s: float) -> Feed:
        self.feed = feed
        image = next(iter(feed.values()))
        b, _, h, w = image.shape
        dims = {"batch": b, "height": h, "width": w}
        out: Feed = {}
        for o in self.manifest.outputs:
            shape = [d if isinstance(d, int) else dims.get(d, 1) for d in o.shape]
            if len(shape) == 4:  # maps: the input's grid, divided by their stride
                shape[2:] = [h // o.stride, w // o.stride]
            out[o.name] = np.zeros(shape, np.float32)
        return out


def server_input_side(manifest: Manifest, side: int) -> int:
    """The input side the server's segmentation task runs for a ``side`` x ``side`` upload.

    Found by running the real task code with a probe in place of the batcher, so
    that it follows whatever context or padding the task adds.
    """
    import asyncio

    from service.runtime.segmentation import SegmentationTask

    probe = _ShapeProbe(manifest)
    task = SegmentationTask(manifest, probe)  # type: ignore[arg-type]
    image = np.zeros((len(manifest.input.bands), side, side), np.uint8)
    asyncio.run(task.predict(image, None, 10.0))
    return int(next(iter(probe.feed.values())).shape[-1])
