"""The model manifest: the JSON a model carries in its ONNX metadata.

The exporter writes it and the server reads it, so that code never special-cases
model names. Only the standard library is imported here: the inference runtime must
import with onnxruntime and numpy alone. Which tasks exist, and what each asks of
a manifest, is the task classes' (:mod:`service.runtime.tasks`).
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

# Outputs are described in their own module; the manifest's readers import them from here too.
from service.runtime.manifest_outputs import OUTPUT_KINDS as OUTPUT_KINDS
from service.runtime.manifest_outputs import OutputSpec as OutputSpec
from service.runtime.manifest_outputs import output_problems

MANIFEST_KEY = "attnserve.manifest"
# A plain NAME.onnx is served with the manifest in NAME.manifest.json beside it.
SIDECAR_SUFFIX = ".manifest.json"
# Set by `attnserve fp16` on half-precision copies; absent means float32.
PRECISION_KEY = "attnserve.precision"
SCHEMA_VERSION = 1
# What a model computes in: ``int8`` for copies made by `attnserve quantize`.
PRECISIONS = ("float32", "float16", "int8")
_HEX_COLOR = re.compile(r"#[0-9A-Fa-f]{6}")


class ManifestError(ValueError):
    """A manifest is missing, malformed or inconsistent with its model."""


TENSOR_DEFAULTS = ("band_mean",)


@dataclass(frozen=True)
class TensorSpec:
    """One ONNX graph input; symbolic dimensions are strings (e.g. ``"batch"``).

    ``default`` names how the server fills the input when a caller leaves it
    out: ``band_mean`` is the per-band mean over the spatial axes of the first
    input (the image).
    """

    name: str
    dtype: str
    shape: list[int | str]
    description: str = ""
    default: str | None = None


@dataclass(frozen=True)
class Normalization:
    """How raw input values are normalised: ``(x - mean) / std`` per band.

    ``applied`` is ``in_graph`` when the ONNX graph does it itself, so callers
    feed raw values (as float32) and nothing else.
    """

    mean: list[float]
    std: list[float]
    applied: Literal["in_graph", "caller"] = "in_graph"


@dataclass(frozen=True)
class InputSpec:
    """What imagery the model takes, in the terms a user's raster is checked against.

    ``value_range`` is the range of raw values the model was trained on (e.g.
    ``[0, 255]`` for 8-bit RGB, ``[0, 10000]`` for reflectance x 10000);
    ``accepted_dtypes`` lists raster dtypes that carry such values.
    ``gsd_m`` is the ground sample distance (metres per pixel) the model was
    trained at; ``None`` for models that do not depend on it.
    """

    bands: list[str]
    accepted_dtypes: list[str]
    value_range: list[float]
    units: str
    normalization: Normalization
    tile_size: int | None = None
    tile_overlap: int | None = None
    size_multiple: int | None = None
    min_dates: int | None = None
    max_dates: int | None = None
    day_unit: str | None = None
    gsd_m: float | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything the server needs to know about a model, read from its ONNX file."""

    name: str
    version: str
    task: str
    description: str
    input: InputSpec
    tensors: list[TensorSpec]
    outputs: list[OutputSpec]
    classes: list[str] = field(default_factory=list)
    # Class maps: ``#rrggbb`` per class (their colour table and legend), and the
    # probability below which a pixel gets no class (the map's nodata).
    class_colors: list[str] = field(default_factory=list)
    min_confidence: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # ``quantization`` records how an int8 copy was made and what it lost against float32.
    precision: str = "float32"
    quantization: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def prediction(self) -> OutputSpec:
        """The output that holds the model's answer."""
        return next(o for o in self.outputs if o.role == "prediction")

    @property
    def attention(self) -> list[OutputSpec]:
        """The outputs that hold attention weights, in manifest order."""
        return [o for o in self.outputs if o.role == "attention"]

    @property
    def ref(self) -> str:
        """``name:version``, the exact reference to this model."""
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-ready data."""
        return asdict(self)

    def to_json(self) -> str:
        """The manifest as compact JSON, as stored in the ONNX metadata."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, validate: bool = True) -> Manifest:
        """Parse and validate a manifest from JSON text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"manifest is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from exc
        return cls.from_dict(data, validate=validate)

    @classmethod
    def from_dict(cls, data: Any, *, validate: bool = True) -> Manifest:
        """Build a manifest from plain data, refusing anything inconsistent.

        Errors name the field at fault (``input.bands``, ``outputs[1].kind``).
        ``validate=False`` only builds it, for tools that list every problem
        (:meth:`problems`) rather than stop at the first.
        """
        data = _fields(cls, data, "manifest", optional=("description",))
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ManifestError(f"schema_version must be an integer, not {version!r}")
        if version > SCHEMA_VERSION:
            raise ManifestError(f"manifest schema_version {version} is newer than supported")
        inp = _fields(InputSpec, data["input"], "input")
        inp["normalization"] = Normalization(
            **_fields(Normalization, inp["normalization"], "input.normalization")
        )
        for key in ("tensors", "outputs"):
            if not isinstance(data[key], list):
                raise ManifestError(f"{key} must be a list of objects")
        try:
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=data["task"],
                description=str(data.get("description", "")),
                input=InputSpec(**inp),
                tensors=[
                    TensorSpec(**_fields(TensorSpec, t, f"tensors[{i}]"))
                    for i, t in enumerate(data["tensors"])
                ],
                outputs=[
                    OutputSpec(**_fields(OutputSpec, o, f"outputs[{i}]"))
                    for i, o in enumerate(data["outputs"])
                ],
                classes=[str(c) for c in data.get("classes", [])],
                class_colors=list(data.get("class_colors", [])),
                min_confidence=data.get("min_confidence"),
                training=dict(data.get("training", {})),
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
                precision=str(data.get("precision", "float32")),
                quantization=dict(data.get("quantization", {})),
                schema_version=version,
            )
        except ManifestError:
            raise
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is malformed: {exc}") from exc
        if validate:
            manifest.validate()
        return manifest

    def validate(self) -> None:
        """Check the manifest's internal consistency.

        Raises:
            ManifestError: every problem found, each naming its field.
        """
        found = self.problems()
        if found:
            raise ManifestError("; ".join(found))

    def problems(self) -> list[str]:
        """Every internal inconsistency, each as ``field: what is wrong``."""
        # The task classes import this module, so their registry is looked up here.
        from service.runtime.tasks import INFERENCE_TASKS

        found: list[str] = []
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            found.append(f"name: model name {self.name!r} must be alphanumeric with - or _")
        if not self.version or any(c in self.version for c in "/:\\ "):
            found.append(f"version: model version {self.version!r} is not a plain version string")
        task = INFERENCE_TASKS.get(self.task)
        if task is None:
            known = ", ".join(INFERENCE_TASKS)
            found.append(f"task: unknown task {self.task!r}; known: {known}")
        predictions = [o for o in self.outputs if o.role == "prediction"]
        if len(predictions) != 1:
            found.append(
                f"outputs: manifest must name exactly one prediction output, not {len(predictions)}"
            )
        for i, out in enumerate(self.outputs):
            found.extend(
                f"outputs[{i}].{p}" for p in output_problems(out, self.input.size_multiple)
            )
        if self.precision not in PRECISIONS:
            found.append(
                f"precision: unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}"
            )
        norm = self.input.normalization
        n_bands = len(self.input.bands)
        if n_bands == 0:
            found.append("input.bands: no bands listed; name each band the model takes")
        elif len(norm.mean) != n_bands or len(norm.std) != n_bands:
            found.append(
                f"input.normalization: mean/std must have one value per band ({n_bands}), "
                f"not {len(norm.mean)}/{len(norm.std)}"
            )
        if any(s <= 0 for s in norm.std):
            found.append("input.normalization.std: normalization std must be positive")
        gsd = self.input.gsd_m
        if gsd is not None and (
            isinstance(gsd, bool) or not isinstance(gsd, int | float) or not 0 < gsd < 1e6
        ):
            found.append(f"input.gsd_m: gsd_m must be a positive number of metres, not {gsd!r}")
        if (
            len(self.input.value_range) != 2
            or self.input.value_range[0] >= self.input.value_range[1]
        ):
            found.append("input.value_range: must be [low, high] with low < high")
        for i, tensor in enumerate(self.tensors):
            if tensor.default is not None and tensor.default not in TENSOR_DEFAULTS:
                found.append(
                    f"tensors[{i}].default: input {tensor.name!r} has unknown default "
                    f"{tensor.default!r}; known: {', '.join(TENSOR_DEFAULTS)}"
                )
        found.extend(_class_problems(self))
        if task is not None:
            found.extend(task.manifest_problems(self))
        return found


def sidecar_path(model: Path) -> Path:
    """Where the sidecar manifest of a model file lies: ``NAME.onnx`` -> ``NAME.manifest.json``."""
    return model.with_name(model.stem + SIDECAR_SUFFIX)


def load_manifest(model: Path, embedded: str | None) -> tuple[Manifest, str]:
    """A model's manifest and where it came from: ``embedded`` or ``sidecar``.

    The manifest embedded in the ONNX metadata wins over a sidecar file; a model
    with neither cannot be served.

    Args:
        model: the ``.onnx`` file.
        embedded: the JSON text stored in its metadata, if any.
    """
    if embedded is not None:
        return Manifest.from_json(embedded), "embedded"
    sidecar = sidecar_path(model)
    if not sidecar.is_file():
        raise ManifestError(
            f"model carries no attnserve manifest in its metadata and no {sidecar.name} "
            "lies beside it (`attnserve manifest draft` writes one to start from)"
        )
    try:
        return Manifest.from_json(sidecar.read_text(encoding="utf-8")), "sidecar"
    except (ManifestError, OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{sidecar.name}: {exc}") from exc


def _fields(cls: type, data: Any, where: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` as keyword arguments of dataclass ``cls``; a missing or unknown key is named."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be a JSON object, not {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ManifestError(
            f"{where}.{unknown[0]} is not a manifest field; {where} takes {', '.join(known)}"
        )
    for name, f in known.items():
        required = f.default is MISSING and f.default_factory is MISSING
        if name not in data and required and name not in optional:
            raise ManifestError(f"{where}.{name} is missing")
    return dict(data)


def _class_problems(manifest: Manifest) -> list[str]:
    """What is wrong with the class colours and the minimum confidence."""
    found: list[str] = []
    colors = manifest.class_colors
    if colors and len(colors) != len(manifest.classes):
        found.append(
            f"class_colors: {len(colors)} colours for {len(manifest.classes)} classes; "
            "give one per class or none"
        )
    bad = [c for c in colors if not (isinstance(c, str) and _HEX_COLOR.fullmatch(c))]
    if bad:
        found.append(f"class_colors: {bad[0]!r} is not a colour written #rrggbb")
    low = manifest.min_confidence
    if low is not None and (
        isinstance(low, bool) or not isinstance(low, int | float) or not 0 <= low <= 1
    ):
        found.append(f"min_confidence: must be a probability in [0, 1], not {low!r}")
    return found
