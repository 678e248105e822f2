"""Model manifests: the shipped ones round-trip through JSON; inconsistent ones are refused."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.runtime.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    load_manifest,
    sidecar_path,
)


def test_the_shipped_manifests_round_trip_and_describe_themselves(
    footprints: Manifest, crops: Manifest
) -> None:
    for manifest in (footprints, crops):
        assert Manifest.from_json(manifest.to_json()) == manifest
        assert manifest.ref == f"{manifest.name}:{manifest.version}"
        assert manifest.prediction.role == "prediction"
        assert all(o.role == "attention" for o in manifest.attention)
    assert footprints.task == "segmentation"
    assert "gate_1" in [o.name for o in footprints.attention]
    assert crops.task == "temporal_classification"
    assert crops.classes


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("name", "../etc"), "must be alphanumeric"),
        (_set("version", "1:2"), "not a plain version string"),
        (_set("task", "regression"), "unknown task 'regression'"),
        (_set("schema_version", SCHEMA_VERSION + 1), "newer than supported"),
        (_set("outputs.0.role", "attention"), "exactly one prediction output"),
        (_set("outputs.1.kind", "hologram"), "unknown kind 'hologram'"),
        (_set("input.normalization.std", [1.0, 0.0, 1.0]), "std must be positive"),
        (_set("input.normalization.mean", [0.0]), "one value per band"),
        (_set("input.gsd_m", -0.5), "gsd_m must be a positive number"),
        (_set("input.gsd_m", True), "gsd_m must be a positive number"),
        (_set("input.value_range", [255, 0]), "low < high"),
        (_set("tensors.0.default", "zeros"), "unknown default 'zeros'"),
        (_set("precision", "int4"), "unknown precision 'int4'"),
        (lambda d: d.pop("outputs"), "manifest.outputs is missing"),
        (lambda d: d["input"].pop("bands"), r"^input\.bands is missing$"),
        (lambda d: d["outputs"][1].pop("kind"), r"^outputs\[1\]\.kind is missing$"),
        (
            lambda d: d["outputs"][0].update(colour="red"),
            r"^outputs\[0\]\.colour is not a manifest",
        ),
        (lambda d: d.update(outputs={"probability": {}}), r"^outputs must be a list"),
        (
            lambda d: d["input"].update(normalization=[0, 1]),
            r"^input\.normalization must be a JSON",
        ),
    ],
)
def test_inconsistent_manifests_are_refused(
    footprints: Manifest, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = copy.deepcopy(footprints.to_dict())
    change(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)


def test_a_quantised_copy_s_precision_and_record_round_trip(footprints: Manifest) -> None:
    assert footprints.precision == "float32"
    data = copy.deepcopy(footprints.to_dict())
    data.update(precision="int8", quantization={"pixel_iou_vs_float32": 0.97})
    manifest = Manifest.from_json(json.dumps(data))
    assert (manifest.precision, manifest.quantization) == ("int8", {"pixel_iou_vs_float32": 0.97})
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_a_classifier_must_name_its_classes(crops: Manifest) -> None:
    data = crops.to_dict()
    data["classes"] = []
    with pytest.raises(ManifestError, match="must list its classes"):
        Manifest.from_dict(data)


def test_text_that_is_not_a_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json("{name: footprints")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        Manifest.from_json(json.dumps(["footprints"]))


def test_every_inconsistency_is_listed_with_its_field(footprints: Manifest) -> None:
    data = copy.deepcopy(footprints.to_dict())
    data["outputs"][1]["kind"] = "hologram"
    data["input"]["gsd_m"] = -1
    manifest = Manifest.from_dict(data, validate=False)
    assert [p.split(":")[0] for p in manifest.problems()] == ["outputs[1].kind", "input.gsd_m"]
    with pytest.raises(ManifestError, match=r"hologram.*; input\.gsd_m"):
        manifest.validate()


def test_the_embedded_manifest_wins_over_a_sidecar(footprints: Manifest, tmp_path: Path) -> None:
    model = tmp_path / "roofs-1.0.onnx"
    assert sidecar_path(model) == tmp_path / "roofs-1.0.manifest.json"
    sidecar_path(model).write_text("{not even json")
    manifest, source = load_manifest(model, footprints.to_json())
    assert (manifest, source) == (footprints, "embedded")
    with pytest.raises(ManifestError, match=r"^roofs-1\.0\.manifest\.json: .*not valid JSON"):
        load_manifest(model, None)
    sidecar_path(model).write_text(footprints.to_json())
    assert load_manifest(model, None) == (footprints, "sidecar")
    sidecar_path(model).unlink()
    with pytest.raises(ManifestError, match=r"no roofs-1\.0\.manifest\.json lies beside it"):
        load_manifest(model, None)
