"""Raw tensor feeds: limits, the band_mean default, and a run through the shipped models."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from service.config import SHIPPED_MODELS
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedRaster
from service.pipeline.tensors import TensorLimits, check_feed, check_shape, fill_defaults, infer
from service.runtime.repository import BatchLimits, ModelRepository, ServedModel
from service.runtime.segmentation import band_means
from service.runtime.session import SessionOptions

T = TypeVar("T")
LIMITS = TensorLimits(max_sync_pixels=256 * 256, max_dates=40)


class Models:
    """The shipped footprints and crops models, served on their own event loop."""

    def __init__(self, directory: Path) -> None:
        self.loop = asyncio.new_event_loop()
        options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
        self.repo = ModelRepository(
            directory, options, lambda _m: BatchLimits(8, 1.0, 64), warmup=False
        )
        self.run(self.repo.load())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def get(self, name: str) -> ServedModel:
        return self.repo.get(name)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    directory = tmp_path_factory.mktemp("models")
    for name in ("footprints-2.2.0.onnx", "crops-1.0.0.onnx"):
        (directory / name).symlink_to(SHIPPED_MODELS / name)
    served = Models(directory)
    yield served
    served.run(served.repo.stop(5))
    served.loop.close()


def _images(batch: int = 2, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.uniform(0, 255, (batch, 3, side, side)).astype(np.float32)


def test_band_mean_is_filled_as_predict_fills_it(models: Models) -> None:
    manifest = models.get("footprints").manifest
    images = _images()
    feed = fill_defaults(manifest, {"image": images})
    assert feed["band_mean"].dtype == np.float32
    assert feed["band_mean"].shape == (2, 3)
    for image, mean in zip(images, feed["band_mean"], strict=True):
        np.testing.assert_array_equal(mean, band_means(image, None))
    given = {"image": images, "band_mean": np.zeros((2, 3), np.float32)}
    assert fill_defaults(manifest, given)["band_mean"] is given["band_mean"]


def test_a_feed_runs_through_the_batcher_with_its_default_filled(models: Models) -> None:
    served = models.get("footprints")
    images = _images()
    left_out = models.run(infer(served, {"image": images}, 60))
    means = np.stack([band_means(x, None) for x in images])
    given = models.run(infer(served, {"image": images, "band_mean": means}, 60))
    assert left_out["probability"].shape == (2, 1, 32, 32)
    assert set(left_out) == {o.name for o in served.manifest.outputs}
    for name, array in given.items():
        np.testing.assert_array_equal(left_out[name], array)
    # Each image gets its own mean: a brighter copy of one changes its answer only.
    brighter = images.copy()
    brighter[1] += 60
    other = models.run(infer(served, {"image": brighter}, 60))
    np.testing.assert_allclose(other["probability"][0], left_out["probability"][0], atol=1e-6)
    assert not np.array_equal(other["probability"][1], left_out["probability"][1])


def test_crops_series_run_and_sum_to_one(models: Models) -> None:
    served = models.get("crops")
    rng = np.random.default_rng(2)
    feed = {
        "series": rng.uniform(200, 4000, (3, 4, 10)).astype(np.float32),
        "days": np.tile(np.array([60, 90, 120, 150], np.float32), (3, 1)),
        "valid": np.ones((3, 4), dtype=bool),
    }
    assert check_feed(served, feed, LIMITS) > 0
    out = models.run(infer(served, feed, 60))
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_images_over_the_synchronous_limit_are_too_large(models: Models) -> None:
    served = models.get("footprints")
    small = check_shape(served, [1, 3, 64, 64], LIMITS)
    assert 0 < small < check_shape(served, [2, 3, 64, 64], LIMITS)
    with pytest.raises(PayloadTooLarge, match="input 'image': a 512x256 image is over the 65536"):
        check_shape(served, [1, 3, 256, 512], LIMITS)
    assert check_shape(served, [1, 3, 64], LIMITS) == 0  # decoding names that one


def test_series_over_the_date_limit_are_refused(models: Models) -> None:
    served = models.get("crops")
    assert check_shape(served, [5, 40, 10], LIMITS) > 0
    with pytest.raises(UnsupportedRaster, match="input 'series': 41 dates given; at most 40"):
        check_shape(served, [5, 41, 10], LIMITS)


def test_values_and_masks_predict_refuses_are_refused(models: Models) -> None:
    served = models.get("crops")
    feed = {
        "series": np.full((2, 3, 10), 500.0, np.float32),
        "days": np.array([[1, 2, np.inf], [1, 2, 3]], np.float32),
        "valid": np.ones((2, 3), dtype=bool),
    }
    with pytest.raises(InvalidInput, match="input 'days': values must be finite"):
        check_feed(served, feed, LIMITS)
    feed["days"] = np.tile(np.array([1, 2, 3], np.float32), (2, 1))
    feed["valid"][1] = False
    with pytest.raises(InvalidInput, match="input 'valid': row 1 has no valid date"):
        check_feed(served, feed, LIMITS)
    images = _images(1)
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInput, match="input 'image': values must be finite"):
        check_feed(models.get("footprints"), {"image": images}, LIMITS)
