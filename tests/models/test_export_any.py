"""Any PyTorch module exported with the attention it computes inside, then checked and served."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.cbam_unet import build as build_cbam_unet
from models.export_any import Capture, default_dynamic_axes, export_with_attention
from models.ltae import build as build_ltae
from models.ltae import example_inputs as ltae_inputs
from service.cli import main
from service.runtime.manifest import Manifest, sidecar_path
from service.runtime.manifest_check import check_file
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.segmentation import SegmentationTask
from service.runtime.session import SessionOptions


def cbam_unet() -> nn.Module:
    """A seeded binary CBAM U-Net (the factory ``attnserve export --module`` calls)."""
    return build_cbam_unet(classes=1, sharpness=1.0)


CAPTURES = ["enc1.2.spatial", "enc2.2.spatial", "bottom.2.spatial", "enc1.2.channel"]


def test_a_cbam_unet_exports_its_spatial_attention_as_outputs(tmp_path: Path) -> None:
    out = tmp_path / "cbam-0.1.0.onnx"
    image = torch.rand(1, 3, 64, 64) * 255
    draft = export_with_attention(
        cbam_unet(), {"image": image}, out, CAPTURES, output_names=["probability"]
    )
    manifest = Manifest.from_dict(draft.manifest)
    assert [(o.name, o.kind, o.stride) for o in manifest.outputs] == [
        ("probability", "probability", 1),
        ("enc1_2_spatial", "spatial", 1),
        ("enc2_2_spatial", "spatial", 2),
        ("bottom_2_spatial", "spatial", 4),
        ("enc1_2_channel", "channel", 1),
    ]
    assert manifest.input.size_multiple == 4
    # Channel attention over 8 inner features: one weight each, named by position.
    assert manifest.outputs[-1].shape == ["batch", 8, 1, 1]
    assert manifest.outputs[-1].channel_names(manifest.input.bands)[-1] == "channel_7"
    assert json.loads(sidecar_path(out).read_text()) == draft.manifest
    # The graph's attention is the model's own, on another image size too.
    model, seen = cbam_unet().eval(), {}
    hook = model.enc2[2].spatial.register_forward_hook(lambda m, a, o: seen.setdefault("m", o))
    other = torch.rand(2, 3, 48, 80) * 255
    with torch.no_grad():
        probability = model(other)
    hook.remove()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {"image": other.numpy()}),
            strict=True,
        )
    )
    np.testing.assert_allclose(got["probability"], probability.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["enc2_2_spatial"], seen["m"].numpy(), atol=1e-5)
    # Edited and served: the edited draft agrees with the graph and predicts.
    edited = {**draft.manifest, "classes": ["building"]}
    sidecar_path(out).write_text(json.dumps(edited))
    assert check_file(out) == ("cbam-0.1.0.manifest.json", [])
    layers = asyncio.run(_predict(tmp_path, np.random.default_rng(0).uniform(0, 255, (3, 36, 52))))
    assert layers["probability"].shape == (1, 36, 52)
    assert layers["bottom_2_spatial"].shape == (1, 9, 13)
    assert np.all((layers["enc1_2_spatial"] >= 0) & (layers["enc1_2_spatial"] <= 1))


async def _predict(directory: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    repo = ModelRepository(directory, options, lambda _m: BatchLimits(2, 1.0, 8), warmup=False)
    await repo.load()
    assert repo.failures == {}
    task = repo.get("cbam").task
    assert isinstance(task, SegmentationTask)
    out = await task.predict(image.astype(np.float32), None, 30)
    await repo.stop(5)
    return out.layers


class CropModel(nn.Module):
    """A user's crop classifier around the shipped L-TAE that returns only probabilities."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ltae = build_ltae(
            {"class_names": ["maize", "soy", "cotton"], "heads": 4, "d_model": 32}
        )

    def forward(
        self, series: torch.Tensor, days: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        probabilities: torch.Tensor = self.ltae(series, days, valid)[0]
        return probabilities


def test_the_ltae_attention_comes_out_of_a_model_that_hides_it(tmp_path: Path) -> None:
    series, days, valid = ltae_inputs({}, 2)
    inputs = {"series": series * 2, "days": days, "valid": valid}
    assert default_dynamic_axes(inputs)["valid"] == {0: "batch", 1: "dates"}
    out = tmp_path / "crops-user.onnx"
    draft = export_with_attention(
        CropModel(), inputs, out, ["attention=ltae[1]"], output_names=["probabilities"]
    )
    manifest = Manifest.from_dict(draft.manifest)
    assert manifest.task == "temporal_classification"
    assert [(o.name, o.kind, o.shape) for o in manifest.outputs] == [
        ("probabilities", "class_probabilities", ["batch", 3]),
        ("attention", "temporal", ["batch", 4, "dates"]),
    ]
    assert check_file(out) == ("crops-user.manifest.json", [])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {k: v[:, :5].numpy() for k, v in inputs.items()}
    _, attention = session.run(None, feed)
    with torch.no_grad():
        _, want = CropModel().ltae(*(v[:, :5] for v in inputs.values()))
    np.testing.assert_allclose(attention, want.numpy(), atol=1e-5)
    assert attention.shape == (2, 4, 5)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (["nothing.here"], "has no submodule 'nothing.here'"),
        (["ltae"], "returns 2 values"),
    ],
)
def test_a_capture_that_names_no_single_tensor_is_refused(
    tmp_path: Path, spec: list[str], words: str
) -> None:
    series, days, valid = ltae_inputs({}, 1)
    with pytest.raises(ValueError, match=words):
        export_with_attention(
            CropModel(), {"series": series, "days": days, "valid": valid}, tmp_path / "x.onnx", spec
        )


def test_capture_specs_parse_with_default_names() -> None:
    assert Capture.parse("gate=dec.att[1]") == Capture("gate", "dec.att", 1)
    assert Capture.parse("enc1.cbam.spatial") == Capture("enc1_cbam_spatial", "enc1.cbam.spatial")
    with pytest.raises(ValueError, match="is not NAME=path"):
        Capture.parse("gate=dec att")


def test_the_export_command_takes_a_module_factory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    out = tmp_path / "unet.onnx"
    argv = [
        "export", "--module", "tests.models.test_export_any:cbam_unet",
        "--input", "image=1x3x32x32", "--capture", "gate=enc2.2.spatial",
        "--output", "probability", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    drafted = json.loads(sidecar_path(out).read_text())
    assert [o["name"] for o in drafted["outputs"]] == ["probability", "gate"]
    assert main(["export", "--out", str(out)]) == 2


def test_the_readme_walkthrough_exports_its_module_with_attention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("For instance `mynet/model.py`") :]
    module = section.split("```python\n", 1)[1].split("```", 1)[0]
    command = section.split("# run from the checkout", 1)[1].split("\n", 1)[1]
    command = command.split("\n# wrote", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/attnserve"
    (tmp_path / "mynet").mkdir()
    (tmp_path / "mynet" / "model.py").write_text(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(argv[1:]) == 0
    assert "wrote my-models/roofs-1.0.0.onnx" in capsys.readouterr().out
    out = tmp_path / "my-models" / "roofs-1.0.0.onnx"
    drafted = json.loads(sidecar_path(out).read_text())
    assert [(o["name"], o["kind"]) for o in drafted["outputs"]] == [
        ("probability", "probability"),
        ("gate_1", "spatial"),
        ("gate_2", "spatial"),
        ("features", "channel"),
    ]
    # The README's edits, then its check.
    drafted["classes"] = ["roof"]
    drafted["outputs"][3]["channels"] = [f"f{i}" for i in range(8)]
    sidecar_path(out).write_text(json.dumps(drafted))
    assert check_file(out) == ("roofs-1.0.0.manifest.json", [])
