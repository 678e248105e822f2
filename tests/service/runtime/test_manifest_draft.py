"""Drafts guessed from graphs: roles, kinds, strides and size multiples from one dummy run."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from service.config import SHIPPED_MODELS
from service.runtime.manifest import Manifest
from service.runtime.manifest_draft import draft_manifest
from tests.helpers.onnx_graphs import binary_segmenter, headed_segmenter


def _kinds(manifest: Manifest) -> list[tuple[str, str, str, int]]:
    return [(o.name, o.role, o.kind, o.stride) for o in manifest.outputs]


def test_a_plain_segmenter_is_drafted_as_probability_and_a_coarse_map(tmp_path: Path) -> None:
    draft = draft_manifest(binary_segmenter(tmp_path / "roofs-0.3.onnx"))
    manifest = Manifest.from_dict(draft.manifest)
    assert (manifest.ref, manifest.task) == ("roofs:0.3", "segmentation")
    assert _kinds(manifest) == [
        ("probability", "prediction", "probability", 1),
        ("attention", "attention", "spatial", 2),
    ]
    assert manifest.outputs[1].shape == ["batch", 1, "height_2", "width_2"]
    assert manifest.input.bands == ["red", "green", "blue"]
    assert manifest.input.size_multiple == 2
    assert [t.name for t in manifest.tensors] == ["image"]


def test_heads_of_spatial_attention_and_channel_weights_are_drafted(tmp_path: Path) -> None:
    draft = draft_manifest(headed_segmenter(tmp_path / "heads.onnx"))
    manifest = Manifest.from_dict(draft.manifest)
    assert [(o.name, o.kind, o.shape, o.stride) for o in manifest.attention] == [
        ("heads", "spatial", ["batch", 2, "height_2", "width_2"], 2),
        ("bands", "channel", ["batch", 3], 1),
        ("se", "channel", ["batch", 4, 1, 1], 1),
    ]
    assert manifest.attention[0].heads == 2
    assert manifest.input.size_multiple == 2
    assert any("'heads' drafted as spatial attention with 2 heads" in n for n in draft.notes)
    assert any("'se' drafted as channel attention, 4 weights" in n for n in draft.notes)


def test_the_shipped_footprints_graph_is_drafted_as_its_manifest_describes_it() -> None:
    path = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    manifest = Manifest.from_dict(draft_manifest(path, name="fp").manifest)
    assert _kinds(manifest) == [
        ("probability", "prediction", "probability", 1),
        ("gate_1", "attention", "spatial", 1),
        ("gate_2", "attention", "spatial", 2),
        ("gate_3", "attention", "spatial", 4),
        ("gate_4", "attention", "spatial", 8),
        ("band_weights", "attention", "channel", 1),
    ]
    assert manifest.input.size_multiple == 16
    assert [(t.name, t.default) for t in manifest.tensors] == [
        ("image", None),
        ("band_mean", "band_mean"),
    ]


def test_a_series_classifier_is_drafted_with_dates() -> None:
    path = next(SHIPPED_MODELS.glob("crops-1.*.onnx"))
    manifest = Manifest.from_dict(draft_manifest(path).manifest)
    assert manifest.task == "temporal_classification"
    assert _kinds(manifest) == [
        ("probabilities", "prediction", "class_probabilities", 1),
        ("attention", "attention", "temporal", 1),
    ]
    assert len(manifest.classes) == 6
    assert [t.name for t in manifest.tensors] == ["series", "days", "valid"]


def test_a_prediction_must_look_like_probabilities(tmp_path: Path) -> None:
    path = binary_segmenter(tmp_path / "roofs.onnx")
    with pytest.raises(ValueError, match="no output looks like a prediction"):
        draft_manifest(path, prediction="attention")
    with pytest.raises(ValueError, match="no output looks like a prediction"):
        draft_manifest(path, attention=["probability"])


def test_a_graph_without_an_image_or_series_input_cannot_be_drafted(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 16])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "tokens.onnx"))
    with pytest.raises(ValueError, match=r"no float image \(B, C, H, W\) or series"):
        draft_manifest(tmp_path / "tokens.onnx")


def test_a_graph_with_a_fixed_batch_gets_a_note(tmp_path: Path) -> None:
    path = binary_segmenter(tmp_path / "single.onnx")
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    notes = draft_manifest(path).notes
    assert notes[0].startswith("the graph fixes the batch of 'image' at 1")
