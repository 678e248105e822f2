"""Plain ONNX files written with ``onnx.helper``: models from another project, no torch."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(
    path: Path,
    name: str,
    nodes: list[onnx.NodeProto],
    bands: int,
    outputs: dict[str, list[Any]],
    weights: dict[str, np.ndarray],
    side: int | None = None,
) -> Path:
    """A checked opset-18 graph of ``nodes`` with one ``image`` input, written to ``path``.

    ``side``: the image's fixed height and width (symbolic by default).
    """
    dims: list[Any] = ["N", bands, side or "H", side or "W"]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, dims) for k, dims in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def binary_segmenter(path: Path, bands: int = 3) -> Path:
    """A building-style segmenter with no manifest: ``image (N, bands, H, W)`` float32 raw 0-255.

    Outputs ``probability (N, 1, H, W)``, the sigmoid of a 3 x 3 convolution, and
    ``attention (N, 1, H/2, W/2)``, a sigmoid map at half the input's resolution
    (an average pool of another convolution): what the shipped footprints model's
    manifest describes, in a graph its exporter never saw.
    """
    rng = np.random.default_rng(7)
    weights = (rng.normal(0, 0.01, (2, bands, 3, 3))).astype(np.float32)
    bias = np.array([-0.5, 0.2], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["features"], ["logit", "gate_logit"], axis=1, num_outputs=2),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
        helper.make_node(
            "AveragePool", ["gate_logit"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Sigmoid", ["pooled"], ["attention"]),
    ]
    outputs = {"probability": ["N", 1, "H", "W"], "attention": ["N", 1, "h", "w"]}
    return _save(path, "foreign-segmenter", nodes, bands, outputs, {"w": weights, "b": bias})


def class_segmenter(path: Path, scale: float = 0.05) -> Path:
    """A land-cover style segmenter of 3 classes with no manifest: ``image (N, 3, H, W)`` raw.

    Outputs ``probabilities (N, 3, H, W)``, the softmax over the classes of
    ``scale`` x each band (class ``i`` is the pixel's brightest band ``i``), and
    ``attention (N, 1, H/2, W/2)``, the sigmoid of the bands' mean pooled 2 x 2.
    """
    weights = (np.eye(3) * scale).astype(np.float32).reshape(3, 3, 1, 1)
    mean = np.full((1, 3, 1, 1), 1 / 3 / 255, dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Conv", ["image", "m"], ["brightness"]),
        helper.make_node(
            "AveragePool", ["brightness"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Sigmoid", ["pooled"], ["attention"]),
    ]
    outputs = {"probabilities": ["N", 3, "H", "W"], "attention": ["N", 1, "h", "w"]}
    return _save(path, "foreign-classes", nodes, 3, outputs, {"w": weights, "m": mean})


def headed_segmenter(path: Path) -> Path:
    """A segmenter with several heads of attention and channel weights: ``image (N, 3, H, W)``.

    Outputs ``probability (N, 1, H, W)``, the sigmoid of the red band less 128
    over 50; ``heads (N, 2, H/2, W/2)``, two heads of spatial attention pooled
    2 x 2 (the sigmoid of red, and of blue, less 128 over 50); ``bands (N, 3)``,
    the sigmoid of each band's mean less 128 over 50 (a weight per input band);
    and ``se (N, 4, 1, 1)``, squeeze-and-excitation weights of four features
    (the sigmoid of the image's mean over 255 times 1, 2, -1 and -2).
    """
    red = np.zeros((1, 3, 1, 1), dtype=np.float32)
    red[0, 0] = 1 / 50
    heads = np.zeros((2, 3, 1, 1), dtype=np.float32)
    heads[0, 0] = heads[1, 2] = 1 / 50
    excite = np.repeat(np.array([1, 2, -1, -2], dtype=np.float32) / 3 / 255, 3).reshape(4, 3, 1, 1)
    nodes = [
        helper.make_node("Conv", ["image", "red", "offset"], ["red_logit"]),
        helper.make_node("Sigmoid", ["red_logit"], ["probability"]),
        helper.make_node("Conv", ["image", "pick", "offset2"], ["head_logits"]),
        helper.make_node(
            "AveragePool", ["head_logits"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Sigmoid", ["pooled"], ["heads"]),
        helper.make_node("GlobalAveragePool", ["image"], ["means"]),
        helper.make_node("Flatten", ["means"], ["flat"]),
        helper.make_node("Sub", ["flat", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["band_logits"]),
        helper.make_node("Sigmoid", ["band_logits"], ["bands"]),
        helper.make_node("Conv", ["means", "excite"], ["se_logits"]),
        helper.make_node("Sigmoid", ["se_logits"], ["se"]),
    ]
    outputs = {
        "probability": ["N", 1, "H", "W"],
        "heads": ["N", 2, "h", "w"],
        "bands": ["N", 3],
        "se": ["N", 4, 1, 1],
    }
    weights = {
        "red": red,
        "offset": np.array([-128 / 50], dtype=np.float32),
        "pick": heads,
        "offset2": np.full(2, -128 / 50, dtype=np.float32),
        "centre": np.full((1, 3), 128, dtype=np.float32),
        "scale": np.full((1, 3), 1 / 50, dtype=np.float32),
        "excite": excite,
    }
    return _save(path, "foreign-heads", nodes, 3, outputs, weights)


def chip_classifier(path: Path) -> Path:
    """A scene classifier of 3 classes with no manifest: ``image (N, 3, 64, 64)`` raw 0-255.

    Outputs ``probabilities (N, 3)``, the softmax of the bands' means / 50 (the
    class is the chip's brightest band); ``tokens (N, 2, 16)``, two heads of
    weights over a 4 x 4 grid of 16-pixel patches (the softmax over patches of
    their red, and of their green, mean / 20); and ``gate (N, 1, 16, 16)``, the
    sigmoid of the bands' mean pooled 4 x 4 less 128, over 50.
    """
    pick = np.zeros((2, 3, 1, 1), dtype=np.float32)
    pick[0, 0] = pick[1, 1] = 1 / 20
    mean = np.full((1, 3, 1, 1), 1 / 3 / 50, dtype=np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["means"]),
        helper.make_node("Flatten", ["means"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Conv", ["image", "pick"], ["picked"]),
        helper.make_node(
            "AveragePool", ["picked"], ["patches"], kernel_shape=[16, 16], strides=[16, 16]
        ),
        helper.make_node("Reshape", ["patches", "token_shape"], ["token_logits"]),
        helper.make_node("Softmax", ["token_logits"], ["tokens"], axis=-1),
        helper.make_node("Conv", ["image", "mean", "offset"], ["brightness"]),
        helper.make_node(
            "AveragePool", ["brightness"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("Sigmoid", ["pooled"], ["gate"]),
    ]
    outputs = {"probabilities": ["N", 3], "tokens": ["N", 2, 16], "gate": ["N", 1, 16, 16]}
    weights = {
        "scale": np.full((1, 3), 1 / 50, dtype=np.float32),
        "pick": pick,
        "token_shape": np.array([0, 2, 16], dtype=np.int64),
        "mean": mean,
        "offset": np.array([-128 / 50], dtype=np.float32),
    }
    return _save(path, "foreign-chips", nodes, 3, outputs, weights, side=64)


def with_channel_weights(model: Path) -> Path:
    """A graph of :func:`chip_classifier` given squeeze-and-excitation weights too.

    Adds ``se (N, 4, 1, 1)``: the sigmoid of the bands' means over 255 times 1,
    2, -1 and -2 (its GlobalAveragePool ``means`` excited to four features).
    """
    graph = onnx.load(str(model))
    excite = np.repeat(np.array([1, 2, -1, -2], np.float32) / 3 / 255, 3).reshape(4, 3, 1, 1)
    graph.graph.initializer.append(numpy_helper.from_array(excite, "excite"))
    graph.graph.node.extend(
        [
            helper.make_node("Conv", ["means", "excite"], ["se_logits"]),
            helper.make_node("Sigmoid", ["se_logits"], ["se"]),
        ]
    )
    graph.graph.output.append(
        helper.make_tensor_value_info("se", TensorProto.FLOAT, ["N", 4, 1, 1])
    )
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(model))
    return model


def edited_draft(draft: dict[str, Any], name: str = "roofs") -> dict[str, Any]:
    """A drafted manifest of :func:`binary_segmenter` as its user would edit it."""
    data = copy.deepcopy(draft)
    data["name"] = name
    data["description"] = "roof segmentation from another project, served through a sidecar"
    data["classes"] = ["building"]
    data["input"]["units"] = "8-bit digital numbers"
    data["input"]["accepted_dtypes"] = ["uint8"]
    return data


def _set_output(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["outputs"][1][key] = value

    return change


def _wrong_stride(data: dict[str, Any]) -> None:
    data["outputs"][1]["stride"] = 1
    data["outputs"][1]["shape"] = ["batch", 1, "height", "width"]


def _wrong_rank(data: dict[str, Any]) -> None:
    data["outputs"][1]["stride"] = 1
    data["outputs"][1]["shape"] = ["batch", "height", "width"]


# Six ways a user gets the manifest of binary_segmenter wrong, and a word that
# the check's and the server's message about each must hold.
WRONG_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "wrong-output-name": (_set_output("name", "gate"), "'gate'"),
    "wrong-rank": (_wrong_rank, "has 3 dimensions in the manifest"),
    "wrong-stride": (_wrong_stride, "its stride is 2"),
    "class-count": (lambda d: d.update(classes=["building", "road", "water"]), "3 classes"),
    "unknown-kind": (_set_output("kind", "heatmap"), "unknown kind 'heatmap'"),
    "missing-bands": (lambda d: d["input"].pop("bands"), "input.bands"),
}


def wrong_manifest(good: dict[str, Any], case: str) -> dict[str, Any]:
    """``good`` with the mistake ``case`` of :data:`WRONG_MANIFESTS`, named after it."""
    data = copy.deepcopy(good)
    data["name"] = case
    WRONG_MANIFESTS[case][0](data)
    return data
