"""A draft manifest for an ONNX file that has none, guessed from its graph and one run.

The graph's inputs say the task (an image ``(B, C, H, W)`` or a series
``(B, T, C)``); its outputs, on a dummy input, say what each one is: a
``(B, K, H, W)`` map summing to 1 over ``K`` looks like class probabilities, a
``(B, 1, h, w)`` map in [0, 1] like a probability (at the input's resolution)
or a spatial attention map (at its own stride), ``(B, heads, h, w)`` maps in
[0, 1] like heads of spatial attention, ``(B, C)`` or ``(B, C, 1, 1)`` in [0, 1]
(or over the bands) like channel weights, ``(B, heads, T)`` over the dates
like date weights. An image
graph whose answer is ``(B, K)`` summing to 1 is a chip classifier
(``image_classification``), its ``(B, heads, N)`` outputs token grids over
``sqrt(N) x sqrt(N)`` patches. What a graph
cannot say (band names, value range, classes) is left for the user to edit,
and listed in the notes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.runtime.manifest import SCHEMA_VERSION, Manifest
from service.runtime.manifest_check import (
    PROBE_DATES,
    PROBE_SIDE,
    TOLERANCE,
    GraphTensor,
    dummy_feed,
    graph_tensors,
    image_input,
    open_graph,
)

# Offsets tried on the probe side to find the smallest size multiple the graph takes.
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_TILE = 512
RGB = ("red", "green", "blue", "nir")


@dataclass
class Draft:
    """A drafted manifest (plain JSON data) and what the user should look at."""

    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def draft_manifest(
    path: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    prediction: str | None = None,
    attention: Collection[str] = (),
) -> Draft:
    """Draft the manifest of the ONNX file at ``path``.

    Args:
        path: the model file.
        name, version: the model's; by default from the file name
            (``NAME-1.2.0.onnx``, else ``NAME`` and ``1.0.0``).
        prediction: the output that holds the model's answer, when known.
        attention: outputs known to be attention (e.g. captured by hooks).

    Raises:
        ValueError: the graph has no image or series input, or does not run.
    """
    session = open_graph(str(path))
    inputs = graph_tensors(session.get_inputs())
    main = image_input(inputs)
    if main is None:
        raise ValueError(
            f"{path.name} has no float image (B, C, H, W) or series (B, T, C) input: "
            f"its inputs are {', '.join(f'{t.name} {t.shape}' for t in inputs)}"
        )
    stem_name, stem_version = _name_and_version(path)
    notes: list[str] = []
    image = main.rank == 4
    channels = main.fixed(1 if image else 2)
    if channels is None:
        channels = 3
        notes.append(f"the graph does not fix the band count of {main.name!r}: drafted 3")
    if main.fixed(0) is not None:
        notes.append(
            f"the graph fixes the batch of {main.name!r} at {main.fixed(0)}: the server batches "
            "requests, so re-export it with a dynamic batch (or serve with "
            "ATTNSERVE_BATCHING__MAX_BATCH_SIZE=1)"
        )
    multiple, outputs = _probe(session, inputs, notes) if image else (1, _run(session, inputs))
    task = "segmentation" if image else "temporal_classification"
    if image and _classifies(outputs, prediction):
        task = "image_classification"
    fixed = main.fixed(2) if image else None
    if fixed is not None and task == "image_classification":
        notes.append(f"the graph takes {fixed} x {fixed} chips: the server refuses other sizes")
    elif fixed is not None:
        notes.append(
            f"the graph takes only {fixed} x {fixed} images: the server sends whole images up to "
            "its synchronous limit, so re-export it with dynamic height and width"
        )
    specs, classes = _outputs(outputs, task, channels, multiple, prediction, set(attention), notes)
    bands = (
        list(RGB[:channels])
        if image and channels <= 4
        else [f"band_{i + 1}" for i in range(channels)]
    )
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name or stem_name,
        "version": version or stem_version,
        "task": task,
        "description": f"drafted from {path.name} by attnserve manifest draft",
        "input": {
            "bands": bands,
            "accepted_dtypes": ["uint8", "float32"] if image else ["uint16", "int16", "float32"],
            "value_range": [0.0, 255.0] if image else [0.0, 10000.0],
            "units": "8-bit digital numbers" if image else "surface reflectance x 10000",
            "normalization": {"mean": [0.0] * channels, "std": [1.0] * channels},
            **_tiling(main, multiple, image),
        },
        "tensors": _tensors(inputs, main, channels, image, task == "image_classification"),
        "outputs": specs,
        "classes": classes,
    }
    notes.append(
        "edit input.bands, value_range, accepted_dtypes and units to what the model was "
        "trained on; normalization stays mean 0, std 1 when the graph normalises itself"
    )
    Manifest.from_dict(data)  # a draft the server would refuse helps nobody
    return Draft(data, notes)


def _name_and_version(path: Path) -> tuple[str, str]:
    match = re.fullmatch(r"(.+?)-(\d+(?:\.\d+)*)", path.stem)
    stem, version = (match.group(1), match.group(2)) if match else (path.stem, "1.0.0")
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "model", version


def _run(
    session: ort.InferenceSession, inputs: list[GraphTensor], side: int = PROBE_SIDE
) -> dict[str, np.ndarray]:
    feed = dummy_feed(inputs, side=side)
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(None, feed), strict=True))
    except Exception as exc:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
        raise ValueError(f"the graph does not run on a dummy input ({shapes}): {exc}") from exc


def _probe(
    session: ort.InferenceSession, inputs: list[GraphTensor], notes: list[str]
) -> tuple[int, dict[str, np.ndarray]]:
    """The smallest size multiple the image graph takes whole, and its outputs at the probe side.

    A side is taken when the graph runs on it and every map comes out as the side
    divided by a whole stride, rounded up (what the server's cropping assumes).
    """
    main = image_input(inputs)
    fixed = main.fixed(2) if main is not None else None
    if fixed is not None:
        return fixed, _run(session, inputs, fixed)
    outputs = _run(session, inputs)
    strides = {
        name: PROBE_SIDE // v.shape[-1]
        for name, v in outputs.items()
        # A map pooled to one value per channel has no grid to hold to a stride.
        if v.ndim == 4 and v.shape[-1] > 1 and PROBE_SIDE % v.shape[-1] == 0
    }
    for multiple in MULTIPLES:
        side = PROBE_SIDE + multiple
        try:
            shifted = _run(session, inputs, side)
        except ValueError:
            continue
        if all(shifted[name].shape[-1] == -(-side // s) for name, s in strides.items()):
            return max(multiple, *strides.values(), 1), outputs
    notes.append("no size multiple up to 64 gave whole maps: drafted 64")
    return 64, outputs


def _tiling(main: GraphTensor, multiple: int, image: bool) -> dict[str, Any]:
    if not image:
        return {"min_dates": 1, "max_dates": 366, "day_unit": "day of year"}
    tile = main.fixed(2) or -(-DEFAULT_TILE // multiple) * multiple
    return {
        "tile_size": tile,
        "tile_overlap": -(-tile // 8 // multiple) * multiple,
        "size_multiple": multiple,
    }


def _classifies(outputs: dict[str, np.ndarray], prediction: str | None) -> bool:
    """Whether an image model answers for the whole image: a ``(B, K)`` prediction.

    The named prediction is ``(B, K)``; or, unnamed, no output is a map of
    class probabilities and one ``(B, K)`` output sums to 1 over ``K``.
    """
    if prediction is not None:
        return prediction in outputs and outputs[prediction].ndim == 2
    # Class probability maps make a segmenter; maps of several heads do not.
    if any(v.ndim == 4 and v.shape[1] > 1 and _sums_to_one(v) for v in outputs.values()):
        return False
    return any(v.ndim == 2 and v.shape[1] > 1 and _sums_to_one(v) for v in outputs.values())


def _sums_to_one(value: np.ndarray) -> bool:
    return bool(np.abs(value.sum(axis=1) - 1).max() <= TOLERANCE)


def _tensors(
    inputs: list[GraphTensor], main: GraphTensor, channels: int, image: bool, chip: bool = False
) -> list[dict[str, Any]]:
    """The inputs in the server's order: the image or series first, then the others.

    A chip classifier's image keeps the height and width its graph fixes (a
    token grid's patches cover that chip).
    """
    specs: list[dict[str, Any]] = []
    rest = [t for t in inputs if t is not main]
    if image:
        height = (main.fixed(2) if chip else None) or "height"
        width = (main.fixed(3) if chip else None) or "width"
        specs.append(_tensor(main, ["batch", channels, height, width], "raw band values"))
        for t in rest:
            spec = _tensor(t, ["batch", channels], "per-band mean of the image")
            spec["default"] = "band_mean"
            specs.append(spec)
        return specs
    specs.append(_tensor(main, ["batch", "dates", channels], "raw values per date"))
    # Series models take days, then a validity mask, in that order.
    rest.sort(key=lambda t: t.dtype == "bool")
    for t in rest:
        what = "valid dates" if t.dtype == "bool" else "day of each date"
        specs.append(_tensor(t, ["batch", "dates"], what))
    return specs


def _tensor(t: GraphTensor, shape: list[int | str], description: str) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": shape, "description": description}


def _outputs(
    outputs: dict[str, np.ndarray],
    task: str,
    channels: int,
    multiple: int,
    prediction: str | None,
    attention: set[str],
    notes: list[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Output specs with guessed roles and kinds, prediction first, and the classes."""
    guessed = {
        name: _guess(value, channels, multiple, task, name in attention)
        for name, value in outputs.items()
    }
    if prediction is None:
        prediction = next(
            (
                n
                for n, g in guessed.items()
                if g and g[0] == "class_probabilities" and n not in attention
            ),
            next(
                (
                    n
                    for n, g in guessed.items()
                    if g and g[0] == "probability" and n not in attention
                ),
                None,
            ),
        )
    guess = guessed.get(prediction) if prediction is not None else None
    if guess is None or guess[0] not in ("probability", "class_probabilities"):
        raise ValueError(
            "no output looks like a prediction (class probabilities summing to 1 over K, or one "
            f"map in [0, 1] at the input's resolution): {_shapes(outputs)}; name it"
        )
    specs: list[dict[str, Any]] = []
    classes: list[str] = []
    for name, value in outputs.items():
        guess = guessed[name]
        if guess is None or (name != prediction and guess[0] == "class_probabilities"):
            notes.append(
                f"output {name!r} {tuple(value.shape)} left out: not a kind the server serves"
            )
            continue
        kind, shape, stride = guess
        if name == prediction:
            k = int(value.shape[1])
            if kind == "class_probabilities":
                classes = [f"class_{i}" for i in range(k)]
            else:
                classes = ["foreground"]
            notes.append(f"output {name!r} drafted as the prediction ({kind}): edit its classes")
            specs.insert(0, _output(name, "prediction", kind, shape, 1))
        else:
            kind = "spatial" if kind == "probability" else kind
            specs.append(_output(name, "attention", kind, shape, stride))
            if kind == "channel":
                notes.append(
                    f"output {name!r} drafted as channel attention, {shape[1]} weights: "
                    "name them in its channels if you like"
                )
            elif kind == "spatial" and value.shape[1] > 1:
                notes.append(
                    f"output {name!r} drafted as spatial attention with {value.shape[1]} heads "
                    "(served as their mean, ?head=i for one): check it"
                )
            if kind == "token_grid":
                side = math.isqrt(int(value.shape[-1]))
                specs[-1]["grid"] = [side, side]
                notes.append(f"output {name!r} drafted as a {side} x {side} token grid: check it")
    return specs, classes


def _guess(
    value: np.ndarray, channels: int, multiple: int, task: str, attention: bool = False
) -> tuple[str, list[int | str], int] | None:
    """``(kind, manifest shape, stride)`` of one output on the dummy input, or None.

    ``attention``: the output is known to be attention (a chip classifier's
    ``(B, N)`` token weights may sum to 1 as class probabilities do).
    """
    if not np.isfinite(value).all():
        return None
    in_unit = value.min() >= -TOLERANCE and value.max() <= 1 + TOLERANCE
    sums_to_one = value.ndim >= 2 and _sums_to_one(value)
    if task == "image_classification" and value.ndim in (2, 3):
        tokens = int(value.shape[-1])
        square = math.isqrt(tokens) ** 2 == tokens
        if value.ndim == 2 and sums_to_one and not attention:
            return "class_probabilities", ["batch", int(value.shape[1])], 1
        if square and (attention or value.ndim == 3):
            return "token_grid", ["batch", *[int(d) for d in value.shape[1:]]], 1
        return None
    pooled = value.ndim == 4 and value.shape[2:] == (1, 1)
    if (pooled and task == "image_classification") or (
        task == "segmentation" and (pooled or value.ndim == 2)
    ):
        # One weight per channel (an SE or CBAM block's), or per input band.
        if in_unit or (value.ndim == 2 and value.shape[1] == channels):
            return "channel", ["batch", int(value.shape[1]), *([1, 1] if pooled else [])], 1
        return None
    if value.ndim == 4 and task in ("segmentation", "image_classification"):
        k, side = int(value.shape[1]), value.shape[-1]
        stride = PROBE_SIDE // side if side and PROBE_SIDE % side == 0 else 0
        if not stride or multiple % stride:
            return None
        dims: list[int | str] = (
            ["height", "width"] if stride == 1 else [f"height_{stride}", f"width_{stride}"]
        )
        if k > 1 and sums_to_one and stride == 1 and not attention:
            return "class_probabilities", ["batch", k, *dims], 1
        if k == 1 and in_unit and stride == 1 and not attention:
            return "probability", ["batch", 1, *dims], 1
        # Several maps in [0, 1] are heads of one spatial attention.
        return ("spatial", ["batch", k, *dims], stride) if k == 1 or in_unit or attention else None
    if value.ndim == 2 and task == "temporal_classification" and sums_to_one:
        return "class_probabilities", ["batch", int(value.shape[1])], 1
    if value.ndim == 3 and value.shape[-1] == PROBE_DATES and task == "temporal_classification":
        return "temporal", ["batch", int(value.shape[1]), "dates"], 1
    return None


def _output(name: str, role: str, kind: str, shape: list[int | str], stride: int) -> dict[str, Any]:
    return {"name": name, "role": role, "kind": kind, "shape": shape, "stride": stride}


def _shapes(outputs: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
