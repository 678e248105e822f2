"""Export of the footprints model: ONNX Runtime agrees with torch on every output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.attention_unet import FAMILY, build
from models.export import export_checkpoint, read_manifest
from models.train.common import save_checkpoint
from service.runtime.manifest import MANIFEST_KEY, Manifest

CONFIG = {"name": "footprints-test", "version": "0.0.1", "width": 4, "depth": 4}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Manifest]:
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build(CONFIG)
    # Non-trivial batch-norm statistics, so that eval-mode folding is exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None
                assert m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    ckpt = tmp / "footprints.pt"
    save_checkpoint(
        ckpt,
        family="footprints",
        config=CONFIG,
        model=model,
        metrics={"pixel_iou": 0.5, "building_f1": 0.25},
        training={"data": "none", "seed": 0},
    )
    onnx_path = tmp / "footprints.onnx"
    written = export_checkpoint(ckpt, onnx_path)
    return model, onnx_path, written


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 96)])
def test_onnxruntime_matches_torch_on_every_output(
    exported: tuple[torch.nn.Module, Path, Manifest], batch: int, height: int, width: int
) -> None:
    model, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(FAMILY.output_names)
    x = np.random.default_rng(batch + height).uniform(0, 255, (batch, 3, height, width))
    x = x.astype(np.float32)
    # A band mean other than the tile's own, as a scene's tiles get.
    band_mean = (x.mean(axis=(2, 3)) * 0.9).astype(np.float32)
    got = session.run(None, {"image": x, "band_mean": band_mean})
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(band_mean))]
    assert len(got) == len(want) == 6
    for name, g, w in zip(FAMILY.output_names, got, want, strict=True):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0, err_msg=name)


def test_manifest_reads_back_as_written(exported: tuple[torch.nn.Module, Path, Manifest]) -> None:
    _, path, written = exported
    read = read_manifest(path)
    assert read == written
    assert read.ref == "footprints-test:0.0.1"
    assert read.task == "segmentation"
    assert read.input.size_multiple == 16
    assert read.input.normalization.applied == "in_graph"
    assert [o.name for o in read.outputs] == list(FAMILY.output_names)
    assert [o.level for o in read.attention] == [1, 2, 3, 4, None]
    assert read.attention[-1].kind == "channel"
    assert read.attention[-1].shape == ["batch", 3]
    assert read.metrics == {"pixel_iou": 0.5, "building_f1": 0.25}


def test_onnx_file_passes_checker_at_opset_17_or_later(
    exported: tuple[torch.nn.Module, Path, Manifest],
) -> None:
    _, path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    assert any(p.key == MANIFEST_KEY for p in proto.metadata_props)
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch"
    assert dims[2] == "height"
    assert dims[3] == "width"
