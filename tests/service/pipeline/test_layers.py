"""Reading a stored job's layers: coarse maps on the job's grid, windows and row blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.api.state import AppState
from service.errors import InvalidInput
from service.jobs.record import JobRecord, Layer
from service.pipeline.layers import LayerReader, pick_head, served_values
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.state import FOOTPRINTS, run, stored_upload


def test_layers_are_read_on_the_job_s_grid_by_window_and_by_block(tmp_path: Path) -> None:
    async def scenario(state: AppState) -> None:
        served = state.repository.get("footprints")
        record = await stored_upload(state, "footprints", geotiff(noise(3, 96)))
        coarse = next(la for la in record.layers if (la.stride or 1) > 1)
        kept = state.store.array(record, coarse.name)
        assert kept.shape[-1] == 96 // coarse.stride  # stored at its own resolution
        values = served_values(record, state.store, coarse.name)
        assert values.shape == (96, 96)
        # Upsampled, not invented: its range stays within the stored values'.
        assert np.nanmin(values) >= np.nanmin(kept) - 1e-6
        assert np.nanmax(values) <= np.nanmax(kept) + 1e-6

        prediction = served.manifest.prediction.name
        whole = np.asarray(state.store.array(record, prediction), dtype=np.float32)
        with LayerReader(record, state.store) as reader:
            assert reader.size == (96, 96)
            window = reader.read(prediction, slice(10, 20), slice(30, 50))
            np.testing.assert_array_equal(window, whole[10:20, 30:50])
            blocks = list(reader.blocks(prediction, rows=40))
        assert [first for first, _ in blocks] == [0, 40, 80]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), whole)

    run(tmp_path, (FOOTPRINTS,), scenario)


class Arrays:
    """Stored arrays by name, as a job store gives them."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        return self.arrays[name]


def test_a_coarse_map_of_several_heads_is_upsampled_and_masked_head_by_head() -> None:
    heads = Layer("heads", "attention", "spatial", [2, 4, 4], "float32", stride=2, heads=2)
    heads.mask = "probability"
    probability = np.ones((4, 4), np.float32)
    probability[:, 0] = np.nan  # no data in the first column
    native = np.stack([np.zeros((2, 2)), np.ones((2, 2))]).astype(np.float32)
    record = JobRecord("j" * 24, {}, "raster", 0.0, 0.0, layers=[heads])
    source = Arrays(heads=native, probability=probability)
    values = served_values(record, source, "heads")
    assert values.shape == (2, 4, 4)
    assert np.isnan(values[:, :, 0]).all()
    np.testing.assert_array_equal(values[1, :, 1:], 1.0)
    mean, which = pick_head(heads, values, None)
    assert which == "mean"
    np.testing.assert_array_equal(mean[:, 1:], 0.5)
    one, which = pick_head(heads, values, 1)
    assert which == 1
    np.testing.assert_array_equal(one[:, 1:], 1.0)
    with pytest.raises(InvalidInput, match="head 2 is out of range: layer 'heads' has 2 heads"):
        pick_head(heads, values, 2)
    single = Layer("gate", "attention", "spatial", [4, 4], "float32")
    assert pick_head(single, probability, None)[1] is None
    with pytest.raises(InvalidInput, match="layer 'gate' has a single head"):
        pick_head(single, probability, 0)
