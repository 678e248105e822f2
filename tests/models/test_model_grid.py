"""Offline scoring runs a model on its own ground resolution, as the server does."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.model_grid import grid_factor, predict_on_model_grid, resize


def test_resolutions_within_the_tolerance_run_as_they_are() -> None:
    assert grid_factor(0.5, 0.5) == 1.0
    assert grid_factor(0.55, 0.5) == 1.0
    assert grid_factor(None, 1.0) == 1.0
    assert grid_factor(0.5, None) == 1.0
    assert grid_factor(0.5, 1.0) == 0.5
    assert grid_factor(0.1, 0.5) == pytest.approx(0.2)


def test_the_model_sees_its_grid_and_answers_come_back_on_the_image_grid() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 101, 67), dtype=np.uint8)
    seen: list[tuple[int, ...]] = []

    def predict(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        seen.append(x.shape)
        # A probability equal to the red band scaled, gates at strides 1 and 2.
        return x[0] / 255.0, [x[1] / 255.0, x[2, ::2, ::2] / 255.0]

    prob, gates = predict_on_model_grid(predict, image, 0.5)
    assert seen == [(3, 50, 34)]
    assert prob.shape == (101, 67)
    assert [g.shape for g in gates] == [(101, 67), (51, 34)]
    # Averaged to half and back: close to the original where the image is smooth
    # on average, and exactly its mean overall (area average, then bilinear).
    assert abs(float(prob.mean()) - float(image[0].mean() / 255.0)) < 0.01
    same, same_gates = predict_on_model_grid(predict, image, 1.0)
    np.testing.assert_array_equal(same, image[0] / 255.0)
    assert len(same_gates) == 2


def test_resize_averages_when_shrinking() -> None:
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(resize(values, 2, 2, "average"), [[2.5, 4.5], [10.5, 12.5]])
