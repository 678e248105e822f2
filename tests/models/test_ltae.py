"""The L-TAE crop classifier: shapes, masked attention and day-based positions."""

from __future__ import annotations

import pytest
import torch

from models.data.crops import BANDS
from models.ltae import FAMILY, LTAEClassifier, build, day_encoding, example_inputs, manifest

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def model() -> LTAEClassifier:
    torch.manual_seed(0)
    config = {
        "class_names": CLASSES,
        "heads": 4,
        "d_model": 32,
        "band_mean": [1500.0] * len(BANDS),
        "band_std": [900.0] * len(BANDS),
    }
    return build(config).eval()


def _inputs(batch: int, dates: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    series = torch.rand(batch, dates, len(BANDS), generator=gen) * 6000
    days = torch.sort(torch.rand(batch, dates, generator=gen) * 380, dim=1).values.round()
    valid = torch.rand(batch, dates, generator=gen) > 0.3
    valid[:, 0] = True
    return series, days, valid


@torch.no_grad()
def test_outputs_have_documented_shapes_and_probabilities_sum_to_one(
    model: LTAEClassifier,
) -> None:
    probabilities, attention = model(*_inputs(3, 9))
    assert probabilities.shape == (3, len(CLASSES))
    assert attention.shape == (3, 4, 9)
    assert probabilities.dtype == attention.dtype == torch.float32
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3))


@torch.no_grad()
def test_attention_sums_to_one_over_valid_dates_and_is_zero_elsewhere(
    model: LTAEClassifier,
) -> None:
    series, days, valid = _inputs(6, 20)
    _, attention = model(series, days, valid)
    mask = valid.unsqueeze(1).expand_as(attention)
    assert torch.all(attention[~mask] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(6, 4))
    assert torch.all(attention[mask] > 0)


@pytest.mark.parametrize("dates", [1, 64])
@torch.no_grad()
def test_any_series_length_from_one_to_sixty_four_works(model: LTAEClassifier, dates: int) -> None:
    probabilities, attention = model(*_inputs(2, dates))
    assert attention.shape == (2, 4, dates)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2))


@torch.no_grad()
def test_series_without_valid_dates_gives_zero_attention_and_finite_probabilities(
    model: LTAEClassifier,
) -> None:
    series, days, valid = _inputs(2, 7)
    valid[1] = False
    probabilities, attention = model(series, days, valid)
    assert torch.all(attention[1] == 0)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities[1].sum(), torch.tensor(1.0))
    # The other series in the batch is unaffected by its empty neighbour.
    torch.testing.assert_close(attention[0].sum(-1), torch.ones(4))


@torch.no_grad()
def test_invalid_dates_do_not_change_the_answer_whatever_they_hold(
    model: LTAEClassifier,
) -> None:
    series, days, valid = _inputs(1, 10)
    valid[:] = True
    base_p, base_a = model(series, days, valid)
    # Append five masked dates holding garbage (a bright cloud, NaN nodata).
    junk = torch.full((1, 5, len(BANDS)), 9000.0)
    junk[0, 1:3] = torch.nan
    padded_p, padded_a = model(
        torch.cat([series, junk], 1),
        torch.cat([days, torch.tensor([[17.0, torch.nan, 3.0, 500.0, 0.0]])], 1),
        torch.cat([valid, torch.zeros(1, 5, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(padded_p, base_p)
    torch.testing.assert_close(padded_a[..., :10], base_a)


@torch.no_grad()
def test_positions_come_from_days_so_permuting_dates_with_days_permutes_attention(
    model: LTAEClassifier,
) -> None:
    series, days, valid = _inputs(2, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    p, a = model(series, days, valid)
    pp, pa = model(series[:, perm], days[:, perm], valid[:, perm])
    torch.testing.assert_close(pp, p)
    torch.testing.assert_close(pa, a[..., perm])


@torch.no_grad()
def test_shifting_the_days_changes_the_output(model: LTAEClassifier) -> None:
    series, days, valid = _inputs(2, 12)
    p, a = model(series, days, valid)
    sp, sa = model(series, days + 60.0, valid)
    assert (sp - p).abs().max() > 1e-4
    assert (sa - a).abs().max() > 1e-4


def test_day_encoding_depends_on_day_values_only() -> None:
    days = torch.tensor([[0.0, 100.0, 400.0]])
    enc = day_encoding(days, 16)
    assert enc.shape == (1, 3, 16)
    torch.testing.assert_close(enc[0, 0], torch.cat([torch.zeros(8), torch.ones(8)]))
    torch.testing.assert_close(day_encoding(days[:, [2]], 16)[0, 0], enc[0, 2])


def test_heads_must_divide_the_model_width() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        build({"class_names": CLASSES, "d_model": 30, "heads": 4})


def test_family_examples_feed_the_model_and_manifest_describes_it() -> None:
    config = {"class_names": CLASSES, "heads": 2, "d_model": 16, "name": "crops-x"}
    inputs = example_inputs(config, 3)
    probabilities, attention = build(config).eval()(*inputs)
    assert probabilities.shape == (3, 5)
    assert attention.shape[:2] == (3, 2)
    m = manifest({"config": config, "metrics": {"overall_accuracy": 0.5}, "training": {}})
    m.validate()
    assert m.ref == "crops-x:1.0.0"
    assert m.task == "temporal_classification"
    assert m.classes == CLASSES
    assert [t.name for t in m.tensors] == list(FAMILY.input_names)
    assert [o.name for o in m.outputs] == list(FAMILY.output_names)
    assert m.prediction.shape == ["batch", 5]
    assert m.attention[0].shape == ["batch", 2, "dates"]
    assert m.input.bands == list(BANDS)
    assert m.input.normalization.applied == "in_graph"
    assert m.metrics == {"overall_accuracy": 0.5}
