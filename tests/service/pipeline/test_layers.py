"""Reading a stored job's layers: coarse maps on the job's grid, windows and row blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.api.state import AppState
from service.pipeline.layers import LayerReader, served_values
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
