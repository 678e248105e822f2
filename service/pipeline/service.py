"""The job service: creates, runs, stores and cancels synchronous and scene jobs."""

from __future__ import annotations

import asyncio
from typing import Any

from service.jobs.record import JobRecord, ResamplingSummary
from service.jobs.store import JobStore
from service.pipeline import views
from service.pipeline.intake import SceneRequest, SyncRequest
from service.pipeline.jobs import JobManager
from service.pipeline.runner import PredictionRunner, Stored, model_ref
from service.pipeline.shared_jobs import SharedJobs


class JobService:
    """Every job goes through here: a sync job runs at once, a scene job is queued.

    Args:
        store: where jobs are kept.
        runner: runs a synchronous input through its model.
        manager: queues and runs scene jobs: in this process, or units of them
            through the queue every replica shares.
    """

    def __init__(
        self, store: JobStore, runner: PredictionRunner, manager: JobManager | SharedJobs
    ) -> None:
        self.store = store
        self.runner = runner
        self.manager = manager

    @property
    def queued(self) -> int:
        """Scene jobs waiting to run."""
        return self.manager.queued

    async def start(self) -> None:
        """Start running scene jobs, those a stopped server left unfinished included."""
        await self.manager.start()

    async def stop(self, grace_s: float) -> None:
        """Stop running scene jobs; those cut short resume on the next start."""
        await self.manager.stop(grace_s)

    async def run(self, request: SyncRequest, owner: str | None) -> Stored:
        """Run a synchronous request and store its result as a job.

        The request's memory stays reserved: the caller releases it once the
        answer is made (``request.held``).
        """
        stored = await self.runner.run(request.served, request.input, owner)
        if self.store.write_behind:
            self.store.save_soon(stored.record, stored.arrays)  # returns at once
        else:
            await asyncio.to_thread(self.store.save, stored.record, stored.arrays)
        return stored

    async def submit(self, request: SceneRequest, owner: str | None) -> JobRecord:
        """Store a scene job with its input files, checked, and queue it.

        Nothing is left of a job whose files fail their check or that the queue refuses.
        """
        manifest = request.served.manifest
        record = self.store.new_record(model_ref(manifest), "raster", owner)
        record.state = "queued"
        names = [f"input_{i}.tif" for i in range(len(request.parts))]
        record.params = {
            "model": manifest.ref,
            "inputs": names,
            "options": request.options.to_json(),
        }
        if request.references:
            record.params["references"] = request.references  # read where they are
        record.progress = {"done": 0, "total": 0, "fraction": 0.0}
        record.georef = request.georef.to_json()
        if request.resampling is not None:
            # The scene runner follows it.
            record.resampling = ResamplingSummary(**request.resampling.to_json())
        files = dict(zip(names, request.parts, strict=True))
        await asyncio.to_thread(self.store.save, record, {}, files, request.check)
        try:
            await self.manager.enqueue(record)
        except BaseException:
            await asyncio.to_thread(self.store.delete, record.id)
            raise
        return record

    def cancel(self, record: JobRecord) -> JobRecord:
        """Cancel a queued or running scene job."""
        return self.manager.cancel(record)

    def result(self, stored: Stored) -> dict[str, Any]:
        """The JSON answer of a job just run, from the arrays it was stored from."""
        record = stored.record
        return views.job_json(record, views.Fresh(self.store, record, stored.arrays))

    def status(self, record: JobRecord) -> dict[str, Any]:
        """The JSON answer of a job: its state, and its results once done."""
        return views.job_json(record, self.store)

    async def describe(self, record: JobRecord) -> dict[str, Any]:
        """:meth:`status`, with what the shared queue knows: progress and replicas at work."""
        body = self.status(record)
        body.update(await self.manager.live(record))
        return body

    async def prediction_geotiff(self, record: JobRecord) -> bytes:
        """The prediction bands of a raster job as a GeoTIFF on the input's grid."""
        return await asyncio.to_thread(
            views.geotiff, record, self.store, views.prediction_names(record)
        )
