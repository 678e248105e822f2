"""Coarse attention maps: stored at their own resolution, served on the input's grid."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service.config import SHIPPED_MODELS
from service.runtime.manifest import MANIFEST_KEY, Manifest, ManifestError
from service.runtime.segmentation import class_map, coarse_valid, native_extent, upsample
from service.runtime.session import ModelSession, SessionOptions


def _onnx_resize(values: np.ndarray, stride: int) -> np.ndarray:
    """ONNX Runtime's own bilinear ``Resize`` (half-pixel) of a 2-D map by ``stride``."""
    node = helper.make_node(
        "Resize",
        ["x", "", "scales"],
        ["y"],
        mode="linear",
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, stride, stride])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": values[None, None]})[0][0, 0]


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_upsampling_equals_onnx_resize(stride: int) -> None:
    values = np.random.default_rng(stride).random((13, 9), dtype=np.float32)
    want = _onnx_resize(values, stride)
    got = upsample(values, stride, 13 * stride, 9 * stride)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous  # the JSON encoder serialises only C order
    np.testing.assert_allclose(got, want, atol=2e-7, rtol=0)


@pytest.mark.parametrize("stride", [1, 2, 16])
def test_a_window_of_the_upsampled_map_is_the_same_pixels_written_in_place(stride: int) -> None:
    # A scene tile keeps only its core: computed alone, into the caller's buffer.
    values = np.random.default_rng(stride).random((40, 40), dtype=np.float32)
    whole = upsample(values, stride, 40 * stride, 40 * stride)
    window = (slice(5, 5 + 20 * stride), slice(3, 3 + 17 * stride))
    out = np.full((20 * stride, 17 * stride), np.nan, np.float32)
    assert upsample(values, stride, 40 * stride, 40 * stride, window, out) is out
    np.testing.assert_array_equal(out, whole[window])
    np.testing.assert_array_equal(upsample(values, stride, 40 * stride, 40 * stride, window), out)


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_kept_values_reproduce_the_edges_of_any_image_size(stride: int) -> None:
    # A tile padded to 64 px: whatever the image's own size, the values kept
    # upsample to exactly what the whole padded map gives, cropped.
    padded = 64
    full_map = np.random.default_rng(0).random((padded // stride,) * 2, dtype=np.float32)
    whole = upsample(full_map, stride, padded, padded)
    for size in range(padded - 16, padded + 1):
        kept = native_extent(size, stride, padded)
        assert -(-size // stride) <= kept <= padded // stride
        got = upsample(full_map[:kept, :kept], stride, size, size)
        np.testing.assert_array_equal(got, whole[:size, :size])


def test_stride_one_is_a_copy_of_the_map() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = upsample(values, 1, 3, 4)
    np.testing.assert_array_equal(got, values)
    assert not np.shares_memory(got, values)


def test_nan_spreads_only_to_pixels_that_interpolate_from_it() -> None:
    values = np.zeros((4, 4), dtype=np.float32)
    values[0, 0] = np.nan
    got = upsample(values, 2, 8, 8)
    assert np.isnan(got[:2, :2]).all()
    assert np.isfinite(got[4:, :]).all()
    assert np.isfinite(got[:, 4:]).all()


def test_coarse_cells_are_valid_when_any_pixel_under_them_is() -> None:
    valid = np.zeros((5, 7), dtype=bool)
    valid[4, 6] = True  # the last, partial cell
    valid[0, 1] = True
    cells = coarse_valid(valid, 4)
    assert cells.shape == (2, 2)
    assert cells.tolist() == [[True, False], [False, True]]


def _manifest(**output: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "version": "1",
        "task": "segmentation",
        "input": {
            "bands": ["red"],
            "accepted_dtypes": ["uint8"],
            "value_range": [0, 255],
            "units": "dn",
            "normalization": {"mean": [0.0], "std": [1.0]},
            "size_multiple": 8,
        },
        "tensors": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, "h", "w"]}],
        "outputs": [
            {
                "name": "probability",
                "role": "prediction",
                "kind": "probability",
                "shape": ["batch", 1, "h", "w"],
            },
            {
                "name": "gate",
                "role": "attention",
                "kind": "spatial",
                "shape": ["batch", 1, "h2", "w2"],
                **output,
            },
        ],
    }


def test_manifests_without_strides_serve_full_resolution_maps() -> None:
    manifest = Manifest.from_dict(_manifest())
    assert [o.stride for o in manifest.outputs] == [1, 1]
    assert Manifest.from_dict(_manifest(stride=8)).outputs[1].stride == 8


@pytest.mark.parametrize(
    ("output", "words"),
    [
        ({"stride": 0}, "positive integer"),
        ({"stride": 2.5}, "positive integer"),
        ({"stride": 16}, "divide"),
        ({"stride": 3}, "divide"),
        (
            {"stride": 2, "kind": "channel", "shape": ["batch", 1]},
            "channel attention, which has no stride",
        ),
    ],
)
def test_strides_the_server_cannot_serve_are_refused(output: dict[str, Any], words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        Manifest.from_dict(_manifest(**output))


def test_a_prediction_cannot_have_a_stride() -> None:
    data = _manifest()
    data["outputs"][0]["stride"] = 2
    with pytest.raises(ManifestError, match="4-D attention"):
        Manifest.from_dict(data)


def _with_manifest(source: Path, out: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``source`` whose embedded manifest went through ``edit``."""
    model = onnx.load(str(source))
    prop = next(p for p in model.metadata_props if p.key == MANIFEST_KEY)
    data = json.loads(prop.value)
    edit(data)
    prop.value = json.dumps(data)
    onnx.save(model, str(out))
    return out


def _shipped_footprints() -> Path:
    return next(SHIPPED_MODELS.glob("footprints-*.onnx"))


def test_warm_up_refuses_a_model_whose_maps_disagree_with_their_strides(tmp_path: Path) -> None:
    def wrong(data: dict[str, Any]) -> None:
        gate = next(o for o in data["outputs"] if o["name"] == "gate_2")
        gate["stride"] = 4  # the graph computes it at 1/2

    path = _with_manifest(_shipped_footprints(), tmp_path / "wrong.onnx", wrong)
    session = ModelSession(path, SessionOptions(providers=("CPUExecutionProvider",)))
    with pytest.raises(ManifestError, match=r"'gate_2' is 16x16 for a 32x32 input.*stride 4"):
        session.warmup(sizes=(32,))


def test_warm_up_accepts_the_shipped_strides() -> None:
    session = ModelSession(
        _shipped_footprints(), SessionOptions(providers=("CPUExecutionProvider",))
    )
    assert session.warmup(sizes=(32,), batch_sizes=(1, 2)) > 0


def test_a_class_map_takes_the_most_probable_class_above_a_minimum() -> None:
    probs = np.array(
        [[[0.7, 0.2, np.nan]], [[0.2, 0.45, np.nan]], [[0.1, 0.35, np.nan]]], dtype=np.float32
    )
    assert class_map(probs, None, 255).tolist() == [[0, 1, 255]]
    assert class_map(probs, 0.5, 255).tolist() == [[0, 255, 255]]
    assert class_map(probs, 0.5, 255).dtype == np.uint8
