"""Shapes, ranges and size checks of the Attention U-Net."""

from __future__ import annotations

import pytest
import torch

from models.attention_unet import FAMILY, AttentionUNet, build, output_names
from service.runtime.segmentation import upsample


@pytest.fixture(scope="module")
def model() -> AttentionUNet:
    torch.manual_seed(0)
    return build({"width": 4, "depth": 4}).eval()


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 48)])
def test_outputs_have_documented_shapes_and_ranges(
    model: AttentionUNet, batch: int, height: int, width: int
) -> None:
    x = torch.rand(batch, 3, height, width) * 255
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(output_names(4)) == 6
    probability, *gates, band_weights = outs
    assert probability.shape == (batch, 1, height, width)
    assert ((probability >= 0) & (probability <= 1)).all()
    assert len(gates) == 4
    for level, gate in enumerate(gates, start=1):
        stride = 2 ** (level - 1)  # each gate at its own skip connection's resolution
        assert gate.shape == (batch, 1, height // stride, width // stride)
        assert gate.min() >= 0
        assert gate.max() <= 1
    assert band_weights.shape == (batch, 3)
    assert ((band_weights >= 0) & (band_weights <= 1)).all()


def _roughness(gate: torch.Tensor) -> float:
    """Mean absolute difference between horizontally neighbouring pixels."""
    return float((gate[..., 1:] - gate[..., :-1]).abs().mean())


def test_coarse_gates_upsample_smoothly(model: AttentionUNet) -> None:
    # gate_1 is the finest level; the coarsest gate varies only at 1/8 resolution,
    # so once upsampled as the server serves it, neighbouring pixels differ far
    # less than in the finest gate.
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        _, g1, _, _, g4, _ = model(x)
    served = upsample(g4[0, 0].numpy(), 8, 64, 64)
    assert _roughness(torch.from_numpy(served)) < _roughness(g1)


def test_channel_count_and_depth_are_configurable() -> None:
    model = build(
        {
            "bands": ["nir", "red", "green", "blue"],
            "width": 4,
            "depth": 3,
            "mean": [100.0] * 4,
            "std": [50.0] * 4,
        }
    ).eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 4, 16, 24) * 255)
    assert len(outs) == 1 + 3 + 1
    assert outs[-1].shape == (2, 4)


def test_normalisation_lives_in_the_graph() -> None:
    model = build({"width": 4})
    assert torch.allclose(model.mean.flatten(), torch.tensor([123.7, 116.3, 103.5]))
    assert "mean" in model.state_dict()
    assert "std" in model.state_dict()


@pytest.mark.parametrize(("height", "width"), [(30, 32), (32, 40), (100, 100)])
def test_refuses_sizes_not_multiple_of_two_to_depth(
    model: AttentionUNet, height: int, width: int
) -> None:
    with pytest.raises(ValueError, match=r"multiples of 16 \(2\*\*depth\)"):
        model(torch.rand(1, 3, height, width))


def test_refuses_wrong_band_count(model: AttentionUNet) -> None:
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        model(torch.rand(1, 4, 32, 32))


def test_family_names_every_output_with_dynamic_axes() -> None:
    assert FAMILY.name == "footprints"
    assert FAMILY.input_names == ("image", "band_mean")
    assert FAMILY.output_names[0] == "probability"
    assert FAMILY.output_names[-1] == "band_weights"
    for name in ("image", "probability", "gate_1"):
        assert FAMILY.dynamic_axes[name] == {0: "batch", 2: "height", 3: "width"}
    for level in (2, 3, 4):  # coarser gates have sizes of their own
        axes = {0: "batch", 2: f"height_{level}", 3: f"width_{level}"}
        assert FAMILY.dynamic_axes[f"gate_{level}"] == axes
    assert FAMILY.dynamic_axes["band_weights"] == {0: "batch"}
    assert FAMILY.dynamic_axes["band_mean"] == {0: "batch"}


def test_export_build_refuses_depths_the_family_cannot_name() -> None:
    with pytest.raises(ValueError, match="depth-4"):
        FAMILY.build({"depth": 3})


def test_tiles_given_the_scene_band_mean_get_the_scene_band_weights(model: AttentionUNet) -> None:
    scene = torch.rand(1, 3, 64, 64) * 255
    scene[:, :, :32] *= 0.3  # tiles with very different statistics
    with torch.no_grad():
        whole = model(scene)[-1]
        mean = scene.mean(dim=(2, 3))
        for tile in (scene[:, :, :32, :32], scene[:, :, 32:, 32:]):
            own = model(tile)[-1]
            shared = model(tile, mean)[-1]
            assert torch.allclose(shared, whole, atol=1e-6)
            assert not torch.allclose(own, whole, atol=1e-4)


def test_context_blocks_widen_the_field_of_view_and_keep_the_outputs() -> None:
    # With the band attention's whole-image mean held fixed, a pixel's
    # probability depends on inputs up to about 110 px away in the plain
    # network and about 200 px with two context blocks (dilations 2 and 4 at
    # stride 16): a change 150 px away reaches it only through them.
    torch.manual_seed(0)
    plain = build({"width": 4}).eval()
    torch.manual_seed(0)
    wide = build({"width": 4, "context": 2}).eval()
    assert [b.conv.dilation for b in wide.context] == [(2, 2), (4, 4)]
    x = torch.rand(1, 3, 64, 256) * 255
    y = x.clone()
    y[:, :, :, 158:] = 0.0
    band_mean = torch.full((1, 3), 128.0)
    with torch.no_grad():
        for model, reaches in ((plain, False), (wide, True)):
            a, b = model(x, band_mean), model(y, band_mean)
            assert [t.shape for t in a] == [t.shape for t in plain(x, band_mean)]
            far = (a[0][..., 8:16] - b[0][..., 8:16]).abs().max()
            assert (float(far) > 0) is reaches


def test_context_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="context must be 0 or more"):
        build({"context": -1})
