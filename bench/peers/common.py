"""What every peer server does for one footprints tile, with numpy, ONNX Runtime and rasterio.

A peer takes the upload attnserve takes (multipart: ``model`` and ``image``, a
GeoTIFF), decodes it with rasterio, feeds the model what attnserve's
segmentation task feeds it (the raw 8-bit values as float32, padded to the
model's size multiple, and each band's mean as ``band_mean``; the graph
normalises), and answers the probability only: float32 little-endian bytes of
the ``(H, W)`` map, its shape in the ``X-Shape`` header. No attention, no job
store, no input checks beyond what decoding needs.

This module imports nothing of the project, so the peers run in their own
virtual environments (``bench.peers.venvs``) with their framework's pins.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "shipped" / "footprints-2.2.0.onnx"
SIZE_MULTIPLE = 16
MEDIA_TYPE = "application/octet-stream"
# The batch limit of every batching peer: attnserve's default (4 tiles, 5 ms wait).
MAX_BATCH = 4
BATCH_WAIT_S = 0.005


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads() -> int:
    """Intra-op threads of a peer's session: ``PEER_THREADS``, else every usable CPU.

    attnserve's session gets the same number (ONNX Runtime's default on a host
    whose cores it may all use).
    """
    return int(os.environ.get("PEER_THREADS") or usable_cpus())


def session(path: Path = MODEL) -> ort.InferenceSession:
    """A CPU session with attnserve's options: all graph optimisations, no spinning."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads()
    so.enable_mem_pattern = True
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def decode(data: bytes) -> np.ndarray:
    """A GeoTIFF upload as ``(C, H, W)`` float32."""
    from rasterio.io import MemoryFile

    with MemoryFile(data) as mem, mem.open() as ds:
        return np.asarray(ds.read(), dtype=np.float32)


def pad(image: np.ndarray) -> np.ndarray:
    """Reflect-pad ``(C, H, W)`` to the model's size multiple, as attnserve does."""
    _, h, w = image.shape
    ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
    if ph == 0 and pw == 0:
        return image
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect")


def run(sess: ort.InferenceSession, images: list[np.ndarray]) -> list[np.ndarray]:
    """Probabilities ``(H, W)`` of same-shaped ``(C, H, W)`` images, as one batch."""
    means = np.stack([im.reshape(im.shape[0], -1).mean(axis=1, dtype=np.float64) for im in images])
    batch = np.stack([pad(im) for im in images])
    (prob,) = sess.run(["probability"], {"image": batch, "band_mean": means.astype(np.float32)})
    return [prob[i, 0, : im.shape[1], : im.shape[2]] for i, im in enumerate(images)]


def run_grouped(sess: ort.InferenceSession, images: list[np.ndarray]) -> list[np.ndarray]:
    """``run`` over a batch whose images may differ in shape: one run per shape."""
    out: list[np.ndarray | None] = [None] * len(images)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        shapes.setdefault(im.shape, []).append(i)
    for idx in shapes.values():
        for i, p in zip(idx, run(sess, [images[i] for i in idx]), strict=True):
            out[i] = p
    return [p for p in out if p is not None]


def encode(probability: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: float32 little-endian bytes and their shape."""
    body = np.ascontiguousarray(probability, dtype="<f4").tobytes()
    return body, {"X-Shape": ",".join(str(n) for n in probability.shape)}
