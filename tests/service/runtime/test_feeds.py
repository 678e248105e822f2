"""Feeds of several requests merged into one batch and its outputs split back."""

from __future__ import annotations

import numpy as np
import pytest

from service.runtime.chips import ChipClassifier
from service.runtime.feeds import Padding, SameShapeBatches, pad_to, rows_of
from service.runtime.segmentation import SegmentationTask

SERIES = Padding(inputs={"series": (1, 0.0), "valid": (1, False)}, outputs={"att": 2})


def _series(n: int, t: int) -> dict[str, np.ndarray]:
    return {
        "series": np.arange(n * t * 2, dtype=np.float32).reshape(n, t, 2) + 1,
        "valid": np.ones((n, t), bool),
    }


def test_series_of_different_lengths_share_a_batch_key_images_of_other_sizes_do_not() -> None:
    assert SERIES.batch_key(_series(1, 3)) == SERIES.batch_key(_series(4, 7))
    assert SERIES.lengths(_series(2, 7)) == {"series": 7, "valid": 7}
    images = Padding()
    small = {"x": np.zeros((1, 3, 8, 8), np.float32)}
    assert images.batch_key(small) == images.batch_key({"x": np.zeros((5, 3, 8, 8), np.float32)})
    assert images.batch_key(small) != images.batch_key({"x": np.zeros((1, 3, 8, 9), np.float32)})
    assert images.batch_key(small) != images.batch_key({"x": np.zeros((1, 3, 8, 8), np.float16)})


def test_merged_feeds_are_padded_with_their_fill_and_split_back_to_their_own_length() -> None:
    short, long = _series(1, 2), _series(2, 4)
    merged = SERIES.merge([short, long])
    assert merged["series"].shape == (3, 4, 2)
    assert (merged["series"][0, 2:] == 0).all()
    assert not merged["valid"][0, 2:].any()
    np.testing.assert_array_equal(merged["series"][1:], long["series"])
    # A model's attention per date (N, heads, T) comes back trimmed to each feed's dates.
    outputs = {"att": np.ones((3, 2, 4), np.float32), "probs": np.arange(3.0)[:, None]}
    parts = [(1, SERIES.lengths(short)), (2, SERIES.lengths(long))]
    first, second = SERIES.split(outputs, parts)
    assert first["att"].shape == (1, 2, 2)
    assert second["att"].shape == (2, 2, 4)
    np.testing.assert_array_equal(second["probs"][:, 0], [1.0, 2.0])


def test_a_lone_unpadded_feed_is_its_own_batch() -> None:
    feed = {"x": np.zeros((2, 3), np.float32)}
    assert Padding().merge([feed]) is feed


def test_rows_must_agree_and_padding_leaves_full_arrays_alone() -> None:
    assert rows_of(_series(3, 2)) == 3
    with pytest.raises(ValueError, match="disagree on batch size"):
        rows_of({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})
    full = np.ones((2, 4))
    assert pad_to(full, 1, 4, 0.0) is full
    assert pad_to(full, 1, 6, 9.0)[:, 4:].tolist() == [[9.0, 9.0], [9.0, 9.0]]


def test_image_tasks_pad_nothing() -> None:
    for task in (SegmentationTask, ChipClassifier):
        assert issubclass(task, SameShapeBatches)
        padding = task.padding(None)  # type: ignore[arg-type]
        assert padding == Padding()
        assert padding.lengths({"image": np.zeros((1, 3, 8, 8))}) == {}
