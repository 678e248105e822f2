"""Chip classifiers: drafted from a plain graph, their manifests checked, one chip run."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from service.errors import InvalidInput
from service.runtime.chips import ChipClassifier, ChipOutputs, token_map
from service.runtime.manifest import Manifest, ManifestError, sidecar_path
from service.runtime.manifest_check import check_file
from service.runtime.manifest_draft import draft_manifest
from service.runtime.segmentation import upsample
from tests.helpers.onnx_graphs import chip_classifier, with_channel_weights
from tests.helpers.served import served_from

CLASSES = ["reddish", "greenish", "bluish"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return chip_classifier(tmp_path / "scenes-1.0.0.onnx")


def _manifest(model: Path) -> dict[str, Any]:
    return {**draft_manifest(model).manifest, "classes": CLASSES}


def _chip() -> np.ndarray:
    """``(3, 64, 64)``: green throughout, red bright in the top-left patch only."""
    chip = np.full((3, 64, 64), 60.0, np.float32)
    chip[1] = 200.0
    chip[0, :16, :16] = 250.0
    return chip


def _predict(model: Path, chip: np.ndarray, valid: np.ndarray | None = None) -> ChipOutputs:
    async def main() -> ChipOutputs:
        async with served_from(model.parent, "scenes") as served:
            return await ChipClassifier(served.manifest, served.batcher).predict(chip, valid, 30)

    return asyncio.run(main())


def test_a_plain_graph_answering_for_the_whole_image_drafts_as_a_chip_classifier(
    model: Path,
) -> None:
    drafted = draft_manifest(model)
    draft = drafted.manifest
    assert draft["task"] == "image_classification"
    assert "the graph takes 64 x 64 chips: the server refuses other sizes" in drafted.notes
    assert draft["tensors"][0]["shape"] == ["batch", 3, 64, 64]
    outputs = {o["name"]: o for o in draft["outputs"]}
    assert list(outputs) == ["probabilities", "tokens", "gate"]
    assert (outputs["probabilities"]["role"], outputs["probabilities"]["kind"]) == (
        "prediction",
        "class_probabilities",
    )
    assert outputs["probabilities"]["shape"] == ["batch", 3]
    assert (outputs["tokens"]["kind"], outputs["tokens"]["grid"]) == ("token_grid", [4, 4])
    assert (outputs["gate"]["kind"], outputs["gate"]["stride"]) == ("spatial", 4)
    assert len(draft["classes"]) == 3


def test_the_drafted_manifest_agrees_with_its_graph_and_a_wrong_grid_is_named(
    model: Path, tmp_path: Path
) -> None:
    data = _manifest(model)
    sidecar_path(model).write_text(json.dumps(data))
    assert check_file(model)[1] == []
    wrong = copy.deepcopy(data)
    wrong["outputs"][1]["grid"] = [3, 3]
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    problems = check_file(model, path)[1]
    assert any("16 tokens but a 3 x 3 grid has 9" in p for p in problems), problems
    assert any("gives 16 tokens" in p for p in problems), problems


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["outputs"][1].pop("grid"), "a token_grid output, and only one, has a grid"),
        (lambda d: d["outputs"][2].update(grid=[4, 4]), "outputs[2].grid"),
        (lambda d: d["outputs"][1].update(grid=[3, 5]), "outputs[1].grid"),
        (lambda d: d["outputs"][1].update(grid=[4, 4, 1]), "needs its patch grid as [h, w]"),
        (
            lambda d: d["tensors"][0].update(shape=["batch", 3, "height", "width"]),
            "needs a fixed height and width",
        ),
        (
            lambda d: d["outputs"][2].update(kind="temporal"),
            "attention is spatial, token_grid, channel, not 'temporal'",
        ),
        (lambda d: d.update(classes=["one"]), "2 or more classes"),
        (lambda d: d["input"].update(gsd_m=10.0), "input.gsd_m"),
        (lambda d: d["outputs"][0].update(shape=["batch", 3, 64, 64]), "(B, K)"),
    ],
)
def test_a_wrong_chip_manifest_is_refused_naming_the_field(
    model: Path, edit: Any, named: str
) -> None:
    data = copy.deepcopy(_manifest(model))
    edit(data)
    with pytest.raises(ManifestError, match=None) as caught:
        Manifest.from_dict(data)
    assert named in str(caught.value), caught.value


def test_token_weights_cover_their_patches_row_by_row() -> None:
    heads = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [3.0, 2.0, 1.0, 0.0, 1.0, 2.0]])
    got = token_map(heads, [2, 3], 4, 6)
    assert got.shape == (4, 6)
    assert got.dtype == np.float32
    # Mean over the heads: 2, 2, 2 / 2, 3, 4; each token 2 x 2 pixels.
    np.testing.assert_array_equal(got[:2, ::2], [[2, 2, 2], [2, 2, 2]])
    np.testing.assert_array_equal(got[2:, ::2], [[2, 3, 4], [2, 3, 4]])
    np.testing.assert_array_equal(token_map(heads[0], [2, 3], 4, 6)[3, 4:], [6, 6])


def test_a_chip_gets_its_probabilities_and_maps_on_its_grid(model: Path) -> None:
    sidecar_path(model).write_text(json.dumps(_manifest(model)))
    chip = _chip()
    valid = np.ones((64, 64), bool)
    valid[:, 60:] = False
    out = _predict(model, chip, valid)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    fed = np.where(valid[None], chip, 0.0).astype(np.float32)[None]
    probs, tokens, gate = session.run(None, {"image": fed})
    np.testing.assert_allclose(out.probabilities, probs[0], atol=1e-6)
    assert int(out.probabilities.argmax()) == 1  # green
    # One map per head; their mean is the token map of both.
    assert out.maps["tokens"].shape == (2, 64, 64)
    np.testing.assert_allclose(
        out.maps["tokens"][1, :, :60], token_map(tokens[0, 1], [4, 4], 64, 64)[:, :60]
    )
    weights = out.maps["tokens"].mean(axis=0)
    np.testing.assert_allclose(weights[:, :60], token_map(tokens[0], [4, 4], 64, 64)[:, :60])
    assert np.isnan(weights[:, 60:]).all()
    # The bright red patch draws the first head: the top-left patch is the heaviest.
    assert np.nanargmax(weights) == 0
    assert out.maps["gate"].shape == (64, 64)
    # The stride-4 map, upsampled to the chip as the server serves every coarse map.
    want = upsample(gate[0, 0], 4, 64, 64)
    np.testing.assert_allclose(out.maps["gate"][:, :60], want[:, :60], atol=1e-6)
    assert np.isnan(out.maps["gate"][:, 60:]).all()


def test_a_chip_of_another_size_is_refused(model: Path) -> None:
    sidecar_path(model).write_text(json.dumps(_manifest(model)))
    with pytest.raises(InvalidInput, match="chips of 64 x 64 pixels"):
        _predict(model, np.zeros((3, 64, 96), np.float32))


def _two_headed_gate(model: Path) -> Path:
    """The chip classifier with a second head in its gate: ``(N, 2, 16, 16)``, red then blue."""
    graph = onnx.load(str(model))
    weights = {t.name: t for t in graph.graph.initializer}
    pick = np.zeros((2, 3, 1, 1), np.float32)
    pick[0, 0] = pick[1, 2] = 1 / 50
    weights["mean"].CopyFrom(numpy_helper.from_array(pick, "mean"))
    weights["offset"].CopyFrom(numpy_helper.from_array(np.full(2, -128 / 50, np.float32), "offset"))
    gate = next(o for o in graph.graph.output if o.name == "gate")
    gate.type.tensor_type.shape.dim[1].dim_value = 2
    onnx.save(graph, str(model))
    return model


def test_a_map_of_several_heads_keeps_each_on_the_chip_and_their_mean_in_scenes(
    model: Path,
) -> None:
    _two_headed_gate(model)
    manifest = _manifest(model)
    gate = next(o for o in manifest["outputs"] if o["name"] == "gate")
    assert (gate["kind"], gate["shape"], gate["stride"]) == (
        "spatial",
        ["batch", 2, "height_4", "width_4"],
        4,
    )
    sidecar_path(model).write_text(json.dumps(manifest))
    chip = _chip()
    out = _predict(model, chip)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    *_, want = session.run(None, {"image": chip[None]})
    assert out.maps["gate"].shape == (2, 64, 64)
    np.testing.assert_allclose(out.maps["gate"][1], upsample(want[0, 1], 4, 64, 64), atol=1e-6)

    async def native() -> ChipOutputs:
        async with served_from(model.parent, "scenes") as served:
            return await ChipClassifier(served.manifest, served.batcher).native(chip, None, 30)

    np.testing.assert_allclose(asyncio.run(native()).maps["gate"], want[0].mean(axis=0), atol=1e-6)


def test_channel_weights_of_a_chip_classifier_are_drafted_checked_and_given(model: Path) -> None:
    with_channel_weights(model)
    manifest = _manifest(model)
    se = next(o for o in manifest["outputs"] if o["name"] == "se")
    assert (se["role"], se["kind"], se["shape"]) == ("attention", "channel", ["batch", 4, 1, 1])
    sidecar_path(model).write_text(json.dumps(manifest))
    assert check_file(model) == ("scenes-1.0.0.manifest.json", [])
    chip = _chip()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (want,) = session.run(["se"], {"image": chip[None]})
    out = _predict(model, chip)
    assert set(out.maps) == {"tokens", "gate"}
    np.testing.assert_allclose(out.weights["se"], want.ravel(), atol=1e-6)
    # Chip scenes mosaic the maps; the weights come along without a map of their own.

    async def native() -> ChipOutputs:
        async with served_from(model.parent, "scenes") as served:
            return await ChipClassifier(served.manifest, served.batcher).native(chip, None, 30)

    chips = asyncio.run(native())
    assert set(chips.maps) == {"tokens", "gate"}
    np.testing.assert_allclose(chips.weights["se"], want.ravel(), atol=1e-6)
