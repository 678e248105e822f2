"""CUDA graphs: replay a model's captured kernels for fixed input shapes.

ONNX Runtime's CUDA provider (``enable_cuda_graph``) captures one graph per
``gpu_graph_id`` and replays it, skipping per-kernel launch costs, but only for
inputs and outputs bound at the same device addresses with the same shapes.
So each captured shape keeps its own device buffers, batches are padded up to
the next of a few bucketed batch sizes, and any other shape runs uncaptured
(``gpu_graph_id = -1``). Imports nothing but onnxruntime and numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]
# Runs ONNX Runtime needs before it captures (it warms up allocations first).
CAPTURE_RUNS = 3
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket of at least ``rows`` rows, None when none is large enough."""
    fitting = [b for b in buckets if b >= rows]
    return min(fitting) if fitting else None


def pad_rows(feed: Feed, rows: int) -> Feed:
    """Pad every input along the batch axis to ``rows`` rows by repeating its last row.

    Repeated real rows keep padded inputs valid (e.g. a mask with a valid date);
    their outputs are dropped.
    """
    out: Feed = {}
    for name, array in feed.items():
        missing = rows - array.shape[0]
        if missing <= 0:
            out[name] = array
            continue
        out[name] = np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
    return out


def shape_key(feed: Feed) -> ShapeKey:
    """What a captured graph is specific to: every input's name, shape and dtype."""
    return tuple((name, tuple(a.shape), str(a.dtype)) for name, a in sorted(feed.items()))


@dataclass
class _Captured:
    graph_id: int
    inputs: dict[str, ort.OrtValue]
    outputs: list[ort.OrtValue]
    binding: ort.IOBinding
    run_options: ort.RunOptions


class CudaGraphs:
    """Captured CUDA graphs of one session, one per input shape.

    Args:
        session: a session built with ``enable_cuda_graph`` on the CUDA provider.
        output_names: the graph's outputs, in order.
        device_id: the CUDA device.
        buckets: batch sizes captured; batches are padded up to the next one.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        output_names: list[str],
        device_id: int,
        buckets: Sequence[int],
    ) -> None:
        self._session = session
        self._output_names = output_names
        self._device_id = device_id
        self.buckets = tuple(sorted(set(buckets)))
        self._captured: dict[ShapeKey, _Captured] = {}
        self._uncaptured = ort.RunOptions()
        self._uncaptured.add_run_config_entry("gpu_graph_id", "-1")

    @property
    def shapes(self) -> list[ShapeKey]:
        """The input shapes with a captured graph."""
        return list(self._captured)

    def capture(self, feed: Feed) -> None:
        """Capture a graph for exactly this feed's shapes (done at warm-up)."""
        key = shape_key(feed)
        if key in self._captured:
            return
        # One uncaptured run tells the output shapes, so outputs can be preallocated.
        probe = self._session.io_binding()
        for name, array in feed.items():
            probe.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            probe.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(probe, self._uncaptured)
        shapes = [(tuple(v.shape()), ORT_TYPES[v.data_type()]) for v in probe.get_outputs()]
        inputs = {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", self._device_id)
            for name, a in feed.items()
        }
        outputs = [
            ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cuda", self._device_id)
            for shape, dtype in shapes
        ]
        binding = self._session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._output_names, outputs, strict=True):
            binding.bind_ortvalue_output(name, value)
        graph_id = len(self._captured) + 1  # 0 is reserved by ONNX Runtime
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        for _ in range(CAPTURE_RUNS):
            self._session.run_with_iobinding(binding, run_options)
        self._captured[key] = _Captured(graph_id, inputs, outputs, binding, run_options)
        log.info("captured CUDA graph %d for inputs %s", graph_id, key)

    def run(self, feed: Feed) -> Feed | None:
        """Replay the graph for this feed (padded to its bucket); None if none was captured."""
        rows = next(iter(feed.values())).shape[0]
        bucket = bucket_for(rows, self.buckets)
        if bucket is None:
            return None
        padded = pad_rows(feed, bucket)
        captured = self._captured.get(shape_key(padded))
        if captured is None:
            return None
        for name, array in padded.items():
            captured.inputs[name].update_inplace(np.ascontiguousarray(array))
        self._session.run_with_iobinding(captured.binding, captured.run_options)
        return {
            name: value.numpy()[:rows]
            for name, value in zip(self._output_names, captured.outputs, strict=True)
        }

    def run_uncaptured(self, binding: ort.IOBinding) -> None:
        """Run a binding without capture or replay (shapes no graph was captured for)."""
        self._session.run_with_iobinding(binding, self._uncaptured)
