"""Temporal classification on the shipped crops model, through a real batcher."""

from __future__ import annotations

import asyncio
from datetime import date

import numpy as np
import pytest

from service.config import SHIPPED_MODELS
from service.errors import InvalidInput
from service.runtime.batcher import DynamicBatcher
from service.runtime.session import ModelSession, SessionOptions
from service.runtime.temporal import SeriesOutputs, TemporalTask, days_from_dates, input_names


class Batches:
    """Rows of every batch the batcher ran."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def queue_depth(self, depth: int) -> None:
        pass

    def batch_done(self, rows: int, waits_s: object, run_s: float) -> None:
        self.rows.append(rows)

    def batch_failed(self, rows: int) -> None:
        pass


@pytest.fixture(scope="module")
def session() -> ModelSession:
    path = next(SHIPPED_MODELS.glob("crops-1.*.onnx"))
    return ModelSession(path, SessionOptions(providers=("CPUExecutionProvider",)))


def _predict(
    session: ModelSession,
    lengths: list[int],
    batches: Batches,
    invalid: tuple[int, int] | None = None,
) -> list[SeriesOutputs]:
    """Classify one series per length at once, so series of different lengths share batches."""

    async def main() -> list[SeriesOutputs]:
        manifest = session.manifest
        batcher = DynamicBatcher(
            "crops",
            session.run,
            max_batch_size=8,
            max_queue_delay_ms=50,
            max_queue_size=16,
            padding=TemporalTask.padding(manifest),
            observer=batches,
        )
        task = TemporalTask(manifest, batcher)
        await batcher.start()
        rng = np.random.default_rng(0)
        calls = []
        for t in lengths:
            series = rng.uniform(300, 4000, (1, t, 10)).astype(np.float32)
            valid = np.ones((1, t), bool)
            if invalid is not None and invalid[0] == t:
                valid[0, invalid[1]] = False
            days = np.arange(t, dtype=np.float32) * 16 + 10
            calls.append(task.predict(series, days, valid, timeout_s=60))
        try:
            return list(await asyncio.gather(*calls))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_series_of_different_lengths_share_a_batch_and_keep_their_own(
    session: ModelSession,
) -> None:
    batches = Batches()
    short, long = _predict(session, [3, 7], batches, invalid=(7, 2))
    assert batches.rows == [2]
    assert short.probabilities.shape == (1, len(session.manifest.classes))
    np.testing.assert_allclose(long.probabilities.sum(axis=1), 1.0, atol=1e-5)
    [(name, weights)] = long.attention.items()
    assert weights.shape[::2] == (1, 7)
    assert short.attention[name].shape[2] == 3  # trimmed back from the batch's 7
    assert np.all(weights[0, :, 2] == 0)  # the invalid date gets no attention
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)


def test_a_series_without_a_valid_date_is_refused(session: ModelSession) -> None:
    task = TemporalTask(session.manifest, DynamicBatcher(
        "crops", session.run, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1
    ))  # fmt: skip
    with pytest.raises(InvalidInput, match="at least one valid date"):
        asyncio.run(task.predict(np.zeros((1, 2, 10)), np.zeros(2), np.zeros((1, 2), bool), 1))


def test_days_count_from_the_first_year_and_inputs_come_in_manifest_order(
    session: ModelSession,
) -> None:
    days = days_from_dates([date(2024, 1, 1), date(2024, 3, 1), date(2025, 1, 2)])
    np.testing.assert_array_equal(days, [0, 60, 367])  # 2024 is a leap year
    assert days.dtype == np.float32
    with pytest.raises(InvalidInput, match="at least one date"):
        days_from_dates([])
    assert input_names(session.manifest) == ("series", "days", "valid")
