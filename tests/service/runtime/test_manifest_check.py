"""Manifests held against their graphs: every disagreement named in plain words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from service.config import SHIPPED_MODELS
from service.runtime.manifest import Manifest
from service.runtime.manifest_check import (
    check_file,
    check_manifest,
    dummy_feed,
    graph_tensors,
    open_graph,
)
from service.runtime.manifest_draft import draft_manifest
from tests.helpers.onnx_graphs import (
    WRONG_MANIFESTS,
    binary_segmenter,
    edited_draft,
    headed_segmenter,
    wrong_manifest,
)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The plain segmenter and its drafted, edited manifest."""
    path = binary_segmenter(tmp_path_factory.mktemp("check") / "roofs.onnx")
    return path, edited_draft(draft_manifest(path).manifest)


def _check(path: Path, data: dict[str, Any], tmp: Path) -> list[str]:
    sidecar = tmp / "candidate.json"
    sidecar.write_text(json.dumps(data))
    return check_file(path, sidecar)[1]


@pytest.mark.parametrize("pattern", ["footprints-*.onnx", "crops-*.onnx"])
def test_the_shipped_manifests_agree_with_their_graphs(pattern: str) -> None:
    for path in SHIPPED_MODELS.glob(pattern):
        source, problems = check_file(path)
        assert source == "the embedded manifest"
        assert problems == []


def test_the_edited_draft_agrees_with_the_graph(
    segmenter: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, good = segmenter
    assert _check(path, good, tmp_path) == []


def test_six_wrong_manifests_get_six_distinct_clear_messages(
    segmenter: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, good = segmenter
    messages: dict[str, str] = {}
    for case, (_, words) in WRONG_MANIFESTS.items():
        problems = _check(path, wrong_manifest(good, case), tmp_path)
        assert problems, case
        text = "; ".join(problems)
        assert words in text, (case, text)
        messages[case] = text
    assert len(set(messages.values())) == len(WRONG_MANIFESTS)
    # Each names the field at fault.
    assert messages["wrong-output-name"].startswith("outputs[1].name")
    assert "outputs[1].shape" in messages["wrong-rank"]
    assert messages["wrong-stride"].startswith("outputs[1].stride: output 'attention' is 32x32")
    assert messages["class-count"].startswith("classes:")
    assert messages["unknown-kind"].startswith("outputs[1].kind")
    assert messages["missing-bands"] == "input.bands is missing"


def test_band_and_class_counts_are_held_against_the_graph(
    segmenter: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, good = segmenter
    data = json.loads(json.dumps(good))
    data["input"]["bands"] = ["red", "green"]
    data["input"]["normalization"] = {"mean": [0, 0], "std": [1, 1]}
    problems = _check(path, data, tmp_path)
    assert problems == [
        "input.bands: the manifest lists 2 bands (red, green) but the graph's input 'image' takes 3"
    ]


def test_channel_weights_and_heads_are_held_against_the_graph(tmp_path: Path) -> None:
    path = headed_segmenter(tmp_path / "heads.onnx")
    good = edited_draft(draft_manifest(path).manifest, name="heads")
    good["outputs"][3]["channels"] = ["roofs", "roads", "trees", "water"]
    assert _check(path, good, tmp_path) == []
    data = json.loads(json.dumps(good))
    data["outputs"][3]["channels"] = ["roofs", "roads", "trees"]
    assert _check(path, data, tmp_path) == [
        "outputs[3].channels: output 'se' has 4 channels but 3 names"
    ]
    # The heads' map taken for channel weights: the graph shows a map.
    data = json.loads(json.dumps(good))
    data["outputs"][1].update(kind="channel", shape=["batch", 2, 1, 1], stride=1)
    (problem,) = _check(path, data, tmp_path)
    assert problem.startswith("outputs[1].kind: output 'heads' is (1, 2, 32, 32), a map rather")
    # Three heads where the graph gives two: the server would split the map wrongly.
    data = json.loads(json.dumps(good))
    data["outputs"][1]["shape"] = ["batch", 3, "height_2", "width_2"]
    assert _check(path, data, tmp_path) == [
        "outputs[1].shape: output 'heads' is (1, 2, 32, 32) on a dummy input, but the manifest's "
        "shape (batch, 3, height_2, width_2) fixes its second dimension at 3"
    ]
    # Weights declared flat where the graph gives (B, C, 1, 1): a rank the check names.
    data = json.loads(json.dumps(good))
    data["outputs"][3]["shape"] = ["batch", 4]
    data["outputs"][3]["channels"] = None
    (problem,) = _check(path, data, tmp_path)
    assert problem.startswith("outputs[3].shape: output 'se' has 2 dimensions in the manifest")


def test_logits_where_probabilities_belong_are_reported(tmp_path: Path) -> None:
    # The same segmenter with its Sigmoid taken away: raw logits.
    path = binary_segmenter(tmp_path / "logits.onnx")
    model = onnx.load(str(path))
    sigmoid = next(n for n in model.graph.node if n.output[0] == "probability")
    model.graph.node.remove(sigmoid)
    model.graph.node.append(helper.make_node("Mul", ["logit", "hundred"], ["probability"]))
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array(100, np.float32), "hundred")
    )
    onnx.save(model, str(path))
    good = edited_draft(draft_manifest(binary_segmenter(tmp_path / "plain.onnx")).manifest)
    problems = _check(path, good, tmp_path)
    assert len(problems) == 1
    assert "must lie in [0, 1]" in problems[0]
    assert "Sigmoid" in problems[0]


def test_a_graph_input_the_manifest_leaves_out_is_reported(footprints: Manifest) -> None:
    session = open_graph(str(next(SHIPPED_MODELS.glob("footprints-*.onnx"))))
    data = footprints.to_dict()
    data["tensors"] = data["tensors"][:1]
    problems = check_manifest(Manifest.from_dict(data), session)
    assert problems == [
        "tensors: the graph's input 'band_mean' (batch, 3) is not listed, so the server "
        "would never feed it"
    ]


def test_a_model_with_no_manifest_at_all_says_so(tmp_path: Path) -> None:
    path = binary_segmenter(tmp_path / "bare.onnx")
    source, problems = check_file(path)
    assert source == "no manifest"
    assert problems == ["bare.onnx carries no manifest and no bare.manifest.json lies beside it"]


def test_the_dummy_feed_follows_the_graph_inputs() -> None:
    session = open_graph(str(next(SHIPPED_MODELS.glob("crops-1.*.onnx"))))
    feed = dummy_feed(graph_tensors(session.get_inputs()), dates=5, value_range=(0, 10000))
    shapes = {k: (v.shape, str(v.dtype)) for k, v in feed.items()}
    assert shapes == {
        "series": ((1, 5, 10), "float32"),
        "days": ((1, 5), "float32"),
        "valid": ((1, 5), "bool"),
    }
    assert np.all(np.diff(feed["days"][0]) > 0)
    assert feed["series"].min() >= 0
    assert feed["series"].max() <= 10000
