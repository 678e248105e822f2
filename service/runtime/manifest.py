"""The model manifest: the JSON a model carries in its ONNX metadata.

The exporter writes it and the server reads it, so that code never special-cases
model names. Only the standard library is used here: the inference runtime must
import with onnxruntime and numpy alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

MANIFEST_KEY = "attnserve.manifest"
# Set by `attnserve fp16` on half-precision copies; absent means float32.
PRECISION_KEY = "attnserve.precision"
SCHEMA_VERSION = 1

Task = Literal["segmentation", "temporal_classification"]
TASKS: tuple[str, ...] = ("segmentation", "temporal_classification")
OutputRole = Literal["prediction", "attention"]
OutputKind = Literal["probability", "class_probabilities", "spatial", "channel", "temporal"]
OUTPUT_KINDS: tuple[str, ...] = (
    "probability",
    "class_probabilities",
    "spatial",
    "channel",
    "temporal",
)


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
class OutputSpec:
    """One ONNX graph output and what it means.

    ``role`` is ``prediction`` for the model's answer and ``attention`` for the
    weights behind it; ``kind`` says how an attention output is laid out:
    ``spatial`` maps ``(B,1,H,W)``, ``channel`` band weights ``(B,C)``,
    ``temporal`` date weights ``(B,heads,T)``.

    ``stride`` is how many input pixels one value of a 4-D output covers along
    each axis: a map computed at 1/``stride`` of the input's resolution (e.g. a
    coarse skip connection's gate) is stored that small and upsampled
    bilinearly (half-pixel centres, as ONNX ``Resize``) to the input's grid
    only when it is served.
    """

    name: str
    role: OutputRole
    kind: OutputKind
    shape: list[int | str]
    level: int | None = None
    description: str = ""
    stride: int = 1


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
    task: Task
    description: str
    input: InputSpec
    tensors: list[TensorSpec]
    outputs: list[OutputSpec]
    classes: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
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
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate a manifest from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc.msg}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build a manifest from plain data, refusing anything inconsistent."""
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        try:
            version = int(data.get("schema_version", SCHEMA_VERSION))
            if version > SCHEMA_VERSION:
                raise ManifestError(f"manifest schema_version {version} is newer than supported")
            inp = dict(data["input"])
            inp["normalization"] = Normalization(**inp["normalization"])
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                task=data["task"],
                description=str(data.get("description", "")),
                input=InputSpec(**inp),
                tensors=[TensorSpec(**t) for t in data["tensors"]],
                outputs=[OutputSpec(**o) for o in data["outputs"]],
                classes=[str(c) for c in data.get("classes", [])],
                training=dict(data.get("training", {})),
                metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"manifest is malformed: {exc!r}") from exc
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Check the manifest's internal consistency."""
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ManifestError(f"model name {self.name!r} must be alphanumeric with - or _")
        if not self.version or any(c in self.version for c in "/:\\ "):
            raise ManifestError(f"model version {self.version!r} is not a plain version string")
        if self.task not in TASKS:
            raise ManifestError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        predictions = [o for o in self.outputs if o.role == "prediction"]
        if len(predictions) != 1:
            raise ManifestError("manifest must name exactly one prediction output")
        for out in self.outputs:
            if out.role not in ("prediction", "attention"):
                raise ManifestError(f"output {out.name!r} has unknown role {out.role!r}")
            if out.kind not in OUTPUT_KINDS:
                raise ManifestError(f"output {out.name!r} has unknown kind {out.kind!r}")
            if not isinstance(out.stride, int) or out.stride < 1:
                raise ManifestError(f"output {out.name!r} stride must be a positive integer")
            if out.stride > 1 and (len(out.shape) != 4 or out.role == "prediction"):
                raise ManifestError(
                    f"output {out.name!r}: only 4-D attention maps may have a stride"
                )
            if out.stride > 1 and (self.input.size_multiple or 1) % out.stride:
                raise ManifestError(
                    f"output {out.name!r} stride {out.stride} must divide the input's "
                    f"size_multiple ({self.input.size_multiple})"
                )
        norm = self.input.normalization
        n_bands = len(self.input.bands)
        if n_bands == 0 or len(norm.mean) != n_bands or len(norm.std) != n_bands:
            raise ManifestError("normalization mean/std must have one value per band")
        if any(s <= 0 for s in norm.std):
            raise ManifestError("normalization std must be positive")
        gsd = self.input.gsd_m
        if gsd is not None and (
            isinstance(gsd, bool) or not isinstance(gsd, int | float) or not 0 < gsd < 1e6
        ):
            raise ManifestError(f"input gsd_m must be a positive number of metres, not {gsd!r}")
        if (
            len(self.input.value_range) != 2
            or self.input.value_range[0] >= self.input.value_range[1]
        ):
            raise ManifestError("input value_range must be [low, high] with low < high")
        for tensor in self.tensors:
            if tensor.default is not None and tensor.default not in TENSOR_DEFAULTS:
                raise ManifestError(f"input {tensor.name!r} has unknown default {tensor.default!r}")
        if self.task == "temporal_classification" and not self.classes:
            raise ManifestError("a classification model must list its classes")
