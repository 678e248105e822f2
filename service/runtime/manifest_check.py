"""A manifest held against the graph it describes: names, ranks, strides, classes, values.

The graph is asked through ONNX Runtime alone (its declared inputs and outputs,
then one run on a dummy input), so the check needs no torch and no onnx package.
The model repository refuses a model with any problem found here; ``attnserve
manifest check`` prints them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.runtime.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestError,
    OutputSpec,
    TensorSpec,
    sidecar_path,
)

# Side of the dummy image and dates of the dummy series a graph is probed with.
PROBE_SIDE = 64
PROBE_DATES = 6
# A probability may miss [0, 1] or a sum 1 by float32 rounding, no more.
TOLERANCE = 1e-3
# Ranks each output kind may have, by task; a kind a task does not list is not checked.
RANKS: dict[tuple[str, str], tuple[int, ...]] = {
    ("segmentation", "probability"): (4,),
    ("segmentation", "class_probabilities"): (4,),
    ("segmentation", "spatial"): (4,),
    ("segmentation", "channel"): (2, 4),
    ("temporal_classification", "class_probabilities"): (2,),
    ("temporal_classification", "temporal"): (3,),
    ("image_classification", "class_probabilities"): (2,),
    ("image_classification", "spatial"): (4,),
    ("image_classification", "channel"): (2, 4),
}
# Tasks whose 4-D outputs are maps of the image at their stride.
MAP_TASKS = ("segmentation", "image_classification")
_NUMPY_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bool)": "bool",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


@dataclass(frozen=True)
class GraphTensor:
    """One input or output as the graph declares it; a symbolic dimension is a str or None."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def fixed(self, axis: int) -> int | None:
        """The dimension at ``axis`` when the graph fixes it, else None."""
        dim = self.shape[axis] if -self.rank <= axis < self.rank else None
        return dim if isinstance(dim, int) else None


def graph_tensors(nodes: Sequence[ort.NodeArg]) -> list[GraphTensor]:
    """The graph's inputs or outputs (``session.get_inputs()``) as :class:`GraphTensor`."""
    return [
        GraphTensor(n.name, _NUMPY_TYPES.get(n.type, n.type), tuple(n.shape or ())) for n in nodes
    ]


def open_graph(path: str) -> ort.InferenceSession:
    """A CPU session of an ONNX file, for probing it (failed probes are reported, not logged)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def image_input(inputs: Sequence[GraphTensor]) -> GraphTensor | None:
    """The graph's image ``(B, C, H, W)`` or series ``(B, T, C)`` input: the first float one."""
    return next((t for t in inputs if t.rank in (3, 4) and t.dtype.startswith("float")), None)


def dummy_feed(
    inputs: Sequence[GraphTensor],
    *,
    side: int = PROBE_SIDE,
    dates: int = PROBE_DATES,
    bands: int | None = None,
    value_range: Sequence[float] = (0.0, 255.0),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded inputs of the shapes and dtypes the graph declares.

    The image or series gets values drawn uniformly over ``value_range``; a
    ``(B, C)`` float input its per-band mean, a ``(B, T)`` one increasing days,
    a boolean one True. Symbolic dimensions take ``side``, ``dates`` or
    ``bands`` by position; fixed ones are kept.
    """
    rng = np.random.default_rng(seed)
    main = image_input(inputs)
    channels = (main.fixed(1 if main.rank == 4 else 2) if main else None) or bands or 3
    lo, hi = float(value_range[0]), float(value_range[1])
    feed: dict[str, np.ndarray] = {}
    image: np.ndarray | None = None
    for tensor in inputs:
        per_band = tensor is not main and tensor.rank == 2 and tensor.fixed(1) == channels
        if tensor is main and tensor.rank == 4:
            want = [1, channels, side, side]
        elif tensor is main:
            want = [1, dates, channels]
        elif per_band:
            want = [1, channels]
        else:
            want = [1, *[dates] * (tensor.rank - 1)]
        shape = [tensor.fixed(i) or w for i, w in enumerate(want[: tensor.rank])]
        shape += [1] * (tensor.rank - len(shape))
        if tensor.dtype == "bool":
            feed[tensor.name] = np.ones(shape, dtype=bool)
        elif tensor is main:
            image = rng.uniform(lo, hi, shape).astype(tensor.dtype)
            feed[tensor.name] = image
        elif per_band and image is not None:
            axes = (0, 1) if image.ndim == 3 else (0, 2, 3)
            feed[tensor.name] = image.mean(axis=axes)[None].astype(tensor.dtype)
        else:
            days = np.arange(shape[-1], dtype=np.float64) * 10.0
            feed[tensor.name] = np.broadcast_to(days, shape).astype(tensor.dtype)
    return feed


def check_manifest(
    manifest: Manifest,
    session: ort.InferenceSession,
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> list[str]:
    """Every disagreement between ``manifest`` and the graph of ``session``, in plain words.

    The manifest's own inconsistencies come first (:meth:`Manifest.problems`),
    then its inputs and outputs against the graph's declared names and ranks,
    then what one run on a dummy input shows: map sizes against strides,
    class counts, and values a probability cannot take.

    ``run`` runs the dummy feed (a served model's own ``ModelSession.run``, which
    keeps to its IO binding and CUDA graphs); the bare session by default.
    """
    found = manifest.problems()
    inputs = graph_tensors(session.get_inputs())
    outputs = graph_tensors(session.get_outputs())
    found += _input_problems(manifest, inputs)
    found += _declared_problems("outputs", manifest.outputs, outputs)
    declared = {t.name: t for t in outputs}
    named = {t.name for t in manifest.tensors} <= {t.name for t in inputs}
    if not named or not {o.name for o in manifest.outputs} <= set(declared):
        return found  # the server could not feed or read this graph: nothing to run for
    multiple = manifest.input.size_multiple or 1
    side = -(-PROBE_SIDE // multiple) * multiple
    feed = dummy_feed(
        inputs,
        side=side,
        bands=len(manifest.input.bands) or None,
        value_range=manifest.input.value_range if len(manifest.input.value_range) == 2 else (0, 1),
    )
    try:
        if run is not None:
            ran = run(feed)
        else:
            ran = dict(zip([o.name for o in outputs], session.run(None, feed), strict=True))
    except Exception as exc:  # any failure of the graph is the finding
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
        return [*found, f"the graph does not run on a dummy input ({shapes}): {exc}"]
    for i, spec in enumerate(manifest.outputs):
        rank = declared[spec.name].rank
        if spec.name in ran and (not rank or rank == len(spec.shape)):
            found += _run_problems(manifest, i, spec, np.asarray(ran[spec.name]), side)
    return found


def check_file(model: Path, manifest: Path | None = None) -> tuple[str, list[str]]:
    """Check the manifest the server would serve ``model`` with, or the one in ``manifest``.

    Without ``manifest``: the embedded one, else ``NAME.manifest.json`` beside the file.

    Returns:
        Which manifest was checked (in words), and every problem found.
    """
    session = open_graph(str(model))
    if manifest is None:
        embedded = session.get_modelmeta().custom_metadata_map.get(MANIFEST_KEY)
        sidecar = sidecar_path(model)
        if embedded is None and not sidecar.is_file():
            return "no manifest", [
                f"{model.name} carries no manifest and no {sidecar.name} lies beside it"
            ]
        source = "the embedded manifest" if embedded is not None else sidecar.name
        text = embedded if embedded is not None else sidecar.read_text(encoding="utf-8")
    else:
        source, text = manifest.name, manifest.read_text(encoding="utf-8")
    try:
        parsed = Manifest.from_json(text, validate=False)
    except ManifestError as exc:
        return source, [str(exc)]
    return source, check_manifest(parsed, session)


def _input_problems(manifest: Manifest, inputs: list[GraphTensor]) -> list[str]:
    found = _declared_problems("tensors", manifest.tensors, inputs)
    listed = {t.name for t in manifest.tensors}
    for graph in inputs:
        if graph.name not in listed:
            found.append(
                f"tensors: the graph's input {graph.name!r} {_dims(graph.shape)} is not "
                "listed, so the server would never feed it"
            )
    main = image_input(inputs)
    bands = manifest.input.bands
    if main is not None and bands:
        taken = main.fixed(1 if main.rank == 4 else 2)
        if taken is not None and taken != len(bands):
            found.append(
                f"input.bands: the manifest lists {len(bands)} bands ({', '.join(bands)}) but "
                f"the graph's input {main.name!r} takes {taken}"
            )
    return found


def _declared_problems(
    field: str, specs: Sequence[TensorSpec | OutputSpec], graph: Sequence[GraphTensor]
) -> list[str]:
    """Manifest inputs (``tensors``) or ``outputs`` the graph lacks, or has at another rank."""
    what = "input" if field == "tensors" else "output"
    declared = {t.name: t for t in graph}
    found: list[str] = []
    for i, spec in enumerate(specs):
        tensor = declared.get(spec.name)
        if tensor is None:
            found.append(
                f"{field}[{i}].name: {what} {spec.name!r} is not in the graph; the graph's "
                f"{what}s are {_names(graph)}"
            )
        elif tensor.rank and len(spec.shape) != tensor.rank:
            found.append(
                f"{field}[{i}].shape: {what} {spec.name!r} has {len(spec.shape)} dimensions in "
                f"the manifest {_dims(spec.shape)} but {tensor.rank} in the graph "
                f"{_dims(tensor.shape)}"
            )
    return found


def _run_problems(
    manifest: Manifest, i: int, spec: OutputSpec, value: np.ndarray, side: int
) -> list[str]:
    """What one output's values on the dummy input say against its spec."""
    found: list[str] = []
    where = f"outputs[{i}]"
    rank = RANKS.get((manifest.task, spec.kind))
    if value.ndim != len(spec.shape):
        found.append(
            f"{where}.shape: output {spec.name!r} has {len(spec.shape)} dimensions in the "
            f"manifest but the graph gives {value.ndim}: {tuple(value.shape)}"
        )
    elif rank is not None and value.ndim not in rank:
        found.append(
            f"{where}.kind: a {spec.kind} output of a {manifest.task} model has "
            f"{' or '.join(map(str, rank))} dimensions, but {spec.name!r} has {value.ndim}: "
            f"{tuple(value.shape)}"
        )
    elif value.ndim >= 2 and isinstance(spec.shape[1], int) and value.shape[1] != spec.shape[1]:
        # Heads, channels or classes: what the server splits the output by.
        found.append(
            f"{where}.shape: output {spec.name!r} is {tuple(value.shape)} on a dummy input, but "
            f"the manifest's shape {_dims(spec.shape)} fixes its second dimension at "
            f"{spec.shape[1]}"
        )
    if not np.isfinite(value).all():
        found.append(f"{where}: output {spec.name!r} holds NaN or infinite values")
        return found
    if spec.kind == "channel":
        found += _channel_problems(where, spec, value)
    elif value.ndim == 4 and manifest.task in MAP_TASKS:
        found += _map_problems(where, spec, value, side)
    grid = spec.grid if isinstance(spec.grid, list) else []
    if (
        len(grid) == 2
        and all(isinstance(g, int) for g in grid)
        and value.shape[-1] != grid[0] * grid[1]
    ):
        found.append(
            f"{where}.grid: output {spec.name!r} gives {value.shape[-1]} tokens but its "
            f"{grid[0]} x {grid[1]} grid has {grid[0] * grid[1]}"
        )
    channels = value.shape[1] if value.ndim >= 2 else 1
    classes = manifest.classes
    if spec.kind == "class_probabilities" and classes and channels != len(classes):
        found.append(
            f"classes: the manifest lists {len(classes)} classes ({', '.join(classes)}) but "
            f"output {spec.name!r} gives {channels} probabilities"
        )
    if spec.kind == "probability" and value.ndim == 4 and channels != 1:
        found.append(
            f"{where}.kind: a probability output is one binary map, but {spec.name!r} has "
            f"{channels} channels: use class_probabilities for one per class"
        )
    if spec.kind == "probability" and spec.role == "prediction" and len(classes) > 1:
        found.append(
            f"classes: the manifest lists {len(classes)} classes ({', '.join(classes)}) but "
            f"output {spec.name!r} is a single binary probability: name at most its one "
            "positive class"
        )
    low, high = float(value.min()), float(value.max())
    if spec.kind in ("probability", "class_probabilities") and (
        low < -TOLERANCE or high > 1 + TOLERANCE
    ):
        found.append(
            f"{where}: output {spec.name!r} ({spec.kind}) must lie in [0, 1] but ranges from "
            f"{low:.4g} to {high:.4g} on a dummy input: logits? end the graph with a "
            f"{'Sigmoid' if spec.kind == 'probability' else 'Softmax over the classes'}"
        )
    elif spec.kind == "class_probabilities" and value.ndim >= 2:
        sums = value.sum(axis=1)
        if np.abs(sums - 1).max() > TOLERANCE:
            found.append(
                f"{where}: output {spec.name!r} (class_probabilities) should sum to 1 over its "
                f"{channels} classes but sums range from {sums.min():.4g} to {sums.max():.4g}"
            )
    return found


def _channel_problems(where: str, spec: OutputSpec, value: np.ndarray) -> list[str]:
    """A channel output gives one weight per channel, as many as it names."""
    if value.ndim == 4 and value.shape[2:] != (1, 1):
        return [
            f"{where}.kind: output {spec.name!r} is {tuple(value.shape)}, a map rather than one "
            "weight per channel: channel attention is (B, C) or (B, C, 1, 1); "
            "use spatial for maps"
        ]
    names = spec.channels
    count = value.shape[1] if value.ndim >= 2 else 1
    # A C the manifest fixes is held against its names already (Manifest.problems).
    fixed = len(spec.shape) > 1 and isinstance(spec.shape[1], int)
    if isinstance(names, list) and len(names) != count and not fixed:
        return [
            f"{where}.channels: the manifest names {len(names)} channels but output "
            f"{spec.name!r} gives {count} weights"
        ]
    return []


def _map_problems(where: str, spec: OutputSpec, value: np.ndarray, side: int) -> list[str]:
    height, width = value.shape[-2:]
    want = -(-side // spec.stride)
    if (height, width) == (want, want):
        return []
    if side % height == 0 and height == width:
        implied = f"so its stride is {side // height}"
    else:
        implied = "which no whole stride gives"
    return [
        f"{where}.stride: output {spec.name!r} is {height}x{width} for a {side}x{side} input, "
        f"{implied}, but the manifest's stride {spec.stride} means {want}x{want}"
    ]


def _names(tensors: Sequence[GraphTensor]) -> str:
    return ", ".join(repr(t.name) for t in tensors) or "none"


def _dims(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
