"""Running a synchronous input through its model's task, as a new job's record and arrays."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.pipeline.inputs import RasterInput, SeriesInput
from service.pipeline.tasks import task_for
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel


def model_ref(manifest: Manifest) -> dict[str, str]:
    """The model a job was made by, as stored with it."""
    return {"name": manifest.name, "version": manifest.version, "task": manifest.task}


class Stored(NamedTuple):
    """A new job and its arrays (to store, and to answer without a read)."""

    record: JobRecord
    arrays: dict[str, np.ndarray]


class PredictionRunner:
    """Runs inputs through a served model into a new job (stored by the caller)."""

    def __init__(self, store: JobStore, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s

    async def run(
        self, served: ServedModel, inp: RasterInput | SeriesInput, owner: str | None
    ) -> Stored:
        """Run one input through the model's task; every output becomes a layer of a new job."""
        result = await task_for(served.manifest).predict(served, inp, self.timeout_s)
        record = self.store.new_record(model_ref(served.manifest), result.kind, owner)
        record.layers = result.layers
        record.georef = result.georef
        record.series = result.series
        record.resampling = result.resampling
        return Stored(record, result.arrays)
