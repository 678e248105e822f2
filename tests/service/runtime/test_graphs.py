"""CUDA graph buckets: padding batches to captured sizes, and replay on a GPU."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.runtime.graphs import bucket_for, pad_rows, shape_key
from service.runtime.session import ModelSession, SessionOptions


def test_batches_go_to_the_smallest_bucket_that_holds_them() -> None:
    buckets = (1, 2, 4, 8)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert bucket_for(9, buckets) is None


def test_padding_repeats_the_last_row_and_keeps_the_real_rows() -> None:
    feed = {
        "series": np.arange(12, dtype=np.float32).reshape(3, 2, 2),
        "valid": np.array([[True, False], [False, True], [True, True]]),
    }
    padded = pad_rows(feed, 4)
    assert padded["series"].shape == (4, 2, 2)
    np.testing.assert_array_equal(padded["series"][:3], feed["series"])
    np.testing.assert_array_equal(padded["series"][3], feed["series"][2])
    np.testing.assert_array_equal(padded["valid"][3], [True, True])
    assert shape_key(padded) != shape_key(feed)


def test_cuda_graphs_need_a_bucket_as_large_as_the_largest_batch() -> None:
    with pytest.raises(ValidationError, match="warm-up batch size"):
        Settings(cuda={"cuda_graph": True}, warmup_batch_sizes=[1, 2])
    ok = Settings(cuda={"cuda_graph": True}, warmup_batch_sizes=[8, 1, 4, 2, 4])
    assert ok.warmup_batch_sizes == [1, 2, 4, 8]


@pytest.mark.gpu
def test_replayed_graphs_match_plain_cuda_runs(model_dir) -> None:  # type: ignore[no-untyped-def]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA execution provider")
    path = next(model_dir.glob("footprints-*.onnx"))
    plain = ModelSession(path, SessionOptions())
    graphs = ModelSession(path, SessionOptions(cuda_graph=True, warmup_batch_sizes=(1, 2, 4)))
    if not graphs.cuda_active:
        pytest.skip("CUDA provider did not start")
    graphs.warmup()
    rng = np.random.default_rng(0)
    for rows in (1, 3, 4):
        feed = plain.example_feed(batch=rows, size=plain.manifest.input.tile_size)
        first = next(iter(feed))
        feed[first] = rng.uniform(0, 255, feed[first].shape).astype(np.float32)
        want, got = plain.run(feed), graphs.run(feed)
        for name in want:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=1e-3)
