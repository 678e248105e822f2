"""ONNX Runtime sessions built from a model's manifest."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.errors import InferenceFailed, InvalidInput
from service.memory import malloc_trim
from service.runtime.graphs import ORT_TYPES, CudaGraphs
from service.runtime.manifest import (
    MANIFEST_KEY,
    PRECISION_KEY,
    Manifest,
    ManifestError,
    load_manifest,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Working memory assumed per unit (input pixel, or series row x date) where it
# cannot be measured (no /proc): above what the shipped models need.
FALLBACK_ACTIVATION_BYTES = 2048.0
# Units of input in the run that measures working memory at warm-up.
MEASURE_UNITS = 256 * 256
# Error classes ONNX Runtime raises when the feed itself is wrong (shape, type);
# anything else (allocation failures, kernel errors) is the server's problem.
_INPUT_ERRORS = ("InvalidArgument", "INVALID_ARGUMENT")


@dataclass(frozen=True)
class SessionOptions:
    """How to build an ONNX Runtime session.

    Attributes:
        providers: execution providers in order of preference.
        cuda: CUDA provider options (``device_id``, ``gpu_mem_limit_mb``,
            ``cudnn_conv_algo_search``, ``arena_extend_strategy``).
        intra_op_threads: threads per operator; 0 keeps ONNX Runtime's default.
        intra_op_spinning: let idle operator threads spin-wait for work instead of
            sleeping (ONNX Runtime's default). Spinning threads burn whole cores
            between and after runs, which on a small or shared CPU slows the
            event loop, decoding and the run itself.
        memory_pattern: let ONNX Runtime plan one block for all of a run's
            tensors (its default). Off, tensors come from the arena one by one,
            which lowers the peak of large CPU batches.
        io_binding: bind inputs and outputs explicitly when CUDA is active.
        cuda_graph: capture CUDA graphs at warm-up and replay them for inputs of
            the warmed-up shapes (CUDA only; batches are padded up to the next
            warm-up batch size, other shapes run uncaptured).
        warmup_batch_sizes: batch sizes run at warm-up: the buckets of CUDA graphs.
        cpu_instances: on CPU, sessions of each model that run batches side by
            side when requests queue (see :class:`~service.runtime.batcher.DynamicBatcher`).
    """

    providers: tuple[str, ...] = (CUDA, CPU)
    cuda: dict[str, Any] = field(default_factory=dict)
    intra_op_threads: int = 0
    intra_op_spinning: bool = False
    memory_pattern: bool = True
    io_binding: bool = True
    cuda_graph: bool = False
    warmup_batch_sizes: tuple[int, ...] = (1,)
    cpu_instances: int = 1


def read_manifest(session: ort.InferenceSession) -> Manifest:
    """The manifest stored in a session's model metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if MANIFEST_KEY not in meta:
        raise ManifestError("model carries no attnserve manifest in its metadata")
    return Manifest.from_json(meta[MANIFEST_KEY])


def _provider_list(options: SessionOptions) -> list[str | tuple[str, dict[str, Any]]]:
    available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in options.providers:
        if name not in available:
            log.warning("execution provider %s is not available in this onnxruntime build", name)
            continue
        if name == CUDA:
            cuda = {k: str(v) for k, v in options.cuda.items() if v is not None}
            if "gpu_mem_limit_mb" in cuda:
                cuda["gpu_mem_limit"] = str(int(cuda.pop("gpu_mem_limit_mb")) * 1024 * 1024)
            if options.cuda_graph:
                cuda["enable_cuda_graph"] = "1"
            chosen.append((name, cuda))
        else:
            chosen.append(name)
    if not chosen:
        chosen.append(CPU)
    return chosen


class ModelSession:
    """One ONNX model loaded into an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file.
        options: providers and their options.
    """

    def __init__(self, path: Path, options: SessionOptions) -> None:
        self.path = path
        self.options = options
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.intra_op_threads:
            so.intra_op_num_threads = options.intra_op_threads
        so.log_severity_level = 3
        so.enable_mem_pattern = options.memory_pattern
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if options.intra_op_spinning else "0"
        )
        self._session = ort.InferenceSession(
            str(path), sess_options=so, providers=_provider_list(options)
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        # The embedded manifest, else NAME.manifest.json beside the file.
        self.manifest, self.manifest_source = load_manifest(path, meta.get(MANIFEST_KEY))
        # float16 for copies made by `attnserve fp16` (computed in half precision).
        self.precision = meta.get(PRECISION_KEY, "float32")
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        # Names, ranks and strides are held against the graph where the repository
        # loads a model (service.runtime.manifest_check), with the field at fault.
        self.providers: list[str] = list(self._session.get_providers())
        self._bind = options.io_binding and self.providers[0] == CUDA
        # Models exported in half precision take and give float16; requests and
        # the rest of the server stay float32.
        self._input_types = {i.name: ORT_TYPES.get(i.type) for i in self._session.get_inputs()}
        self._graphs: CudaGraphs | None = None
        self._run_options: ort.RunOptions | None = None
        # Bytes of working memory per unit of input (pixel, or row x date),
        # measured on the first warm-up run (see activation_bytes).
        self.activation_per_unit = FALLBACK_ACTIVATION_BYTES
        # Runs larger than any warm-up run give their arena growth back at their
        # end: otherwise one large request leaves gigabytes held by the arena.
        self._shrink_above = 0
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # While held (a scene job runs), large runs keep their arena growth and
        # the last holder gives it back at once (see hold_arena).
        self._holds = 0
        self._grown = False
        # The largest warm-up run's units per batch row (see keep_batches).
        self._row_units = 0
        self._holds_lock = threading.Lock()
        if options.cuda_graph and self.cuda_active:
            device_id = int(options.cuda.get("device_id", 0) or 0)
            self._graphs = CudaGraphs(
                self._session, self.output_names, device_id, options.warmup_batch_sizes
            )
            self._bind = True  # CUDA graphs need bound inputs and outputs
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("gpu_graph_id", "-1")

    @property
    def graph(self) -> ort.InferenceSession:
        """The ONNX Runtime session itself (for checks of the graph against the manifest)."""
        return self._session

    @property
    def cuda_active(self) -> bool:
        """Whether CUDA is the session's first provider."""
        return self.providers[0] == CUDA

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on one batch.

        Args:
            feed: input arrays by graph input name (batch first).

        Returns:
            Output arrays by graph output name, on the host.

        Raises:
            InvalidInput: ONNX Runtime refused the feed (shape or type).
            InferenceFailed: anything else went wrong (e.g. out of memory).
        """
        feed = self._cast(feed)
        try:
            if self._graphs is not None:
                replayed = self._graphs.run(feed)
                if replayed is not None:
                    return _to_float32(replayed)
            if self._bind:
                return _to_float32(self._run_bound(feed))
            large = bool(self._shrink_above) and feed_units(feed) > self._shrink_above
            if large and self._holds:
                self._grown, large = True, False
            outputs = self._session.run(self.output_names, feed, self._shrink if large else None)
        except Exception as exc:
            raise _classify(exc) from exc
        return _to_float32(dict(zip(self.output_names, outputs, strict=True)))

    def keep_batches(self, rows: int) -> None:
        """Keep the arena after batches of up to ``rows`` of the warm-up's size.

        A CPU instance's batches (its share of the batch size) are what a loaded
        server runs all the time: shrinking the arena after each made every
        batch of two 512 x 512 tiles allocate and fault in its working memory
        again (16% of the batch on one core), for memory the next batch takes back.
        """
        self._shrink_above = max(self._shrink_above, rows * self._row_units)

    def hold_arena(self) -> Callable[[], None]:
        """Keep the arena's growth between runs until the returned release is called.

        A run larger than any warm-up run shrinks the arena at its end, so that
        one large request does not leave its working memory held. A scene job
        runs thousands of such tiles (a scene tile is the model's tile plus its
        halo): shrinking after each made every batch allocate and fault in its
        working memory again, 16% of a 640 x 640 batch of two on one core.
        While a job holds the arena its runs keep it; the last release gives it
        back with one small run (call it off the event loop).
        """
        with self._holds_lock:
            self._holds += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._holds_lock:
                if released:
                    return
                released = True
                self._holds -= 1
                give_back = self._holds == 0 and self._grown
                if give_back:
                    self._grown = False
            if give_back:
                self._give_back()

        return release

    def _give_back(self) -> None:
        """Shrink the arena: one run of the smallest feed, with shrinkage on."""
        try:
            side = self.manifest.input.size_multiple or 32
            feed = self._cast(self.example_feed(batch=1, size=side))
            self._session.run(self.output_names, feed, self._shrink)
        except Exception as exc:  # the memory stays held; the server goes on
            log.warning("model %s: its arena could not be shrunk: %s", self.manifest.ref, exc)

    def _cast(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, array in feed.items():
            want = self._input_types.get(name)
            if want is not None and array.dtype != want and array.dtype.kind == "f":
                array = array.astype(want)
            out[name] = array
        return out

    def _run_bound(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Inputs are copied to the device once and outputs stay there until the
        # whole graph is done, avoiding ONNX Runtime's per-call staging copies.
        binding = self._session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        device_id = int(self.options.cuda.get("device_id", 0) or 0)
        for name in self.output_names:
            binding.bind_output(name, "cuda", device_id)
        self._session.run_with_iobinding(binding, self._run_options)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self.output_names, outputs, strict=True))

    def example_feed(
        self, batch: int = 1, size: int | None = None, dates: int = 4
    ) -> dict[str, Any]:
        """A feed of the right shapes and dtypes built from the manifest (for warm-up)."""
        spec = self.manifest.input
        side = size or spec.size_multiple or 32
        dims = {"batch": batch, "height": side, "width": side, "dates": dates}
        feed: dict[str, Any] = {}
        for tensor in self.manifest.tensors:
            shape = [d if isinstance(d, int) else dims.get(d, 1) for d in tensor.shape]
            if tensor.dtype == "bool":
                feed[tensor.name] = np.ones(shape, dtype=bool)
            elif tensor.name == "days":
                feed[tensor.name] = np.tile(np.arange(shape[-1], dtype=np.float32) * 10, (batch, 1))
            else:
                lo, hi = spec.value_range
                feed[tensor.name] = np.full(shape, (lo + hi) / 2, dtype=np.dtype(tensor.dtype))
        return feed

    def measure_feed(self) -> dict[str, Any]:
        """A feed to measure working memory on: a 256 x 256 image, or 1024 series x 16 dates.

        Per row x date a temporal model's first run needs about the same on a
        small feed as on a large one, so a small feed does.
        """
        # Image models name their spatial input axes; series models do not.
        if "height" in self.manifest.tensors[0].shape:
            multiple = self.manifest.input.size_multiple or 1
            return self._cast(self.example_feed(size=-(-256 // multiple) * multiple))
        return self._cast(self.example_feed(batch=1024, dates=16))

    def warmup(
        self,
        batch_sizes: tuple[int, ...] | None = None,
        sizes: tuple[int | None, ...] | None = None,
        measure: bool = True,
    ) -> float:
        """Run the graph once per batch size and image size so the first request is not slow.

        With CUDA graphs on, this is where they are captured: one per batch size
        (the buckets batches are padded to) and image size.

        Args:
            batch_sizes: defaults to the options' ``warmup_batch_sizes``.
            sizes: image sides; defaults to the manifest's tile size.
            measure: measure working memory (:meth:`activation_bytes`); the
                CPU instances of a model need not measure it again.

        Returns:
            Seconds spent.
        """
        start = time.perf_counter()
        checked = False
        for size in sizes or (self.manifest.input.tile_size,):
            for batch in batch_sizes or self.options.warmup_batch_sizes:
                feed = self._cast(self.example_feed(batch=batch, size=size))
                # Runs up to the measuring run's size keep the arena as it is.
                self._shrink_above = max(self._shrink_above, feed_units(feed), MEASURE_UNITS)
                self._row_units = max(self._row_units, feed_units(feed) // max(1, batch))
                if not checked:
                    # The first run also checks the map sizes the manifest promises,
                    # and measures the working memory per unit of input where
                    # it is large enough for one-time buffers not to dominate.
                    if not measure:
                        outputs = self.run(feed)
                    elif feed_units(feed) >= MEASURE_UNITS:
                        outputs, self.activation_per_unit = self.activation_bytes(feed)
                    else:
                        self.activation_per_unit = self.activation_bytes(self.measure_feed())[1]
                        outputs = self.run(feed)
                    self.check_map_sizes(feed, outputs)
                    checked = True
                    if self._graphs is None:
                        continue
                if self._graphs is not None:
                    self._graphs.capture(feed)
                else:
                    self.run(feed)
        return time.perf_counter() - start

    def activation_bytes(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Run ``feed`` once and measure the process's memory growth per unit of input.

        The first run of a session allocates its arena and one-time buffers, so
        the growth over-estimates what later runs of the same size need: a
        conservative figure for admission. Peak resident memory (VmHWM, reset
        first) where Linux allows, else resident memory after the run (the arena
        keeps what it grew to).

        Returns:
            The outputs, and bytes per unit (input pixel, or series row x date).
        """
        units = max(1, feed_units(feed))
        # Freed heap pages still resident would absorb the run's growth unseen
        # (a process that ran anything large before would measure far too little).
        trim = malloc_trim()
        if trim is not None:
            trim()
        reset = _reset_peak_rss()
        before = _rss_bytes("VmRSS")
        outputs = self.run(feed)
        after = _rss_bytes("VmHWM" if reset else "VmRSS")
        if before is None or after is None:
            return outputs, FALLBACK_ACTIVATION_BYTES
        # Outputs held by the caller are part of what a run needs, too.
        held = sum(int(v.nbytes) for v in outputs.values())
        return outputs, max(float(after - before), float(held)) / units

    def check_map_sizes(self, feed: dict[str, Any], outputs: dict[str, np.ndarray]) -> None:
        """Refuse a model whose 4-D outputs are not the input's size divided by their stride.

        The server crops, stores and upsamples maps by their manifest ``stride``;
        a wrong one would silently serve the wrong part of a map.

        Raises:
            ManifestError: an output's height or width disagrees with its stride.
        """
        image = next(iter(feed.values()))
        if image.ndim != 4:
            return
        height, width = image.shape[-2:]
        for spec in self.manifest.outputs:
            out = outputs.get(spec.name)
            # Channel weights (B, C, 1, 1) are no map.
            if out is None or out.ndim != 4 or len(spec.shape) != 4 or spec.kind == "channel":
                continue
            want = (-(-height // spec.stride), -(-width // spec.stride))
            if tuple(out.shape[-2:]) != want:
                raise ManifestError(
                    f"output {spec.name!r} is {out.shape[-2]}x{out.shape[-1]} for a "
                    f"{height}x{width} input, but its manifest stride {spec.stride} "
                    f"means {want[0]}x{want[1]}"
                )


def feed_units(feed: dict[str, np.ndarray]) -> int:
    """Units of work in a feed: pixels of a ``(B, C, H, W)`` image, or rows x dates of series."""
    first = next(iter(feed.values()))
    if first.ndim == 4:
        return int(first.shape[0] * first.shape[2] * first.shape[3])
    if first.ndim >= 2:
        return int(first.shape[0] * first.shape[1])
    return int(first.size)


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (Linux 4.0+).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _to_float32(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outputs.items()}


def _classify(exc: Exception) -> Exception:
    name = type(exc).__name__
    text = str(exc)
    if name in _INPUT_ERRORS or "INVALID_ARGUMENT" in text:
        return InvalidInput("the model refused the input's shape or type")
    return InferenceFailed(f"inference failed ({name}); the request may be retried")
