"""The FastAPI application: ``create_app(settings)`` is the one way to build it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import __version__
from service.api import errors
from service.api.middleware.admission import Admission
from service.api.middleware.auth import ApiKeyAuth
from service.api.middleware.body_limit import BodyLimit
from service.api.middleware.observe import Observe
from service.api.routes import attention, health, jobs, metrics, models, predict, stac, tiles, v2
from service.api.state import AppState
from service.config import Settings
from service.jobs.queue import RedisQueue
from service.jobs.store import open_store
from service.memory import MemoryBudget, trim_heap_periodically, tune_gc
from service.metrics import Metrics
from service.pipeline.footprints import FootprintLimits, FootprintService
from service.pipeline.intake import Intake
from service.pipeline.jobs import JobManager
from service.pipeline.references import References
from service.pipeline.runner import PredictionRunner
from service.pipeline.scene import SceneRunner
from service.pipeline.service import JobService
from service.pipeline.shared_jobs import QueueLimits, SharedJobs, replica_name
from service.raster.gdal_env import disable_risky_drivers
from service.runtime.cpus import CpuBudget, process_cpus
from service.runtime.manifest import Manifest
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.session import SessionOptions
from service.runtime.tasks import inference_task
from service.viewer import routes as viewer

log = logging.getLogger("attnserve")


def session_options(settings: Settings, cpus: CpuBudget | None = None) -> SessionOptions:
    """ONNX Runtime options from settings.

    Where a cgroup quota or an affinity mask leaves the process fewer CPUs than
    the host has, an unset ``intra_op_threads`` becomes that number: ONNX
    Runtime's own default counts the host's cores.
    """
    cuda = settings.cuda
    cpus = cpus or process_cpus()
    threads = settings.intra_op_threads or (cpus.usable if cpus.limited else 0)
    return SessionOptions(
        providers=tuple(settings.providers),
        cuda={
            "device_id": cuda.device_id,
            "gpu_mem_limit_mb": cuda.gpu_mem_limit_mb,
            "cudnn_conv_algo_search": cuda.cudnn_conv_algo_search,
            "arena_extend_strategy": cuda.arena_extend_strategy,
        },
        intra_op_threads=threads,
        intra_op_spinning=settings.intra_op_spinning,
        memory_pattern=settings.memory_pattern,
        io_binding=cuda.io_binding,
        cuda_graph=cuda.cuda_graph,
        warmup_batch_sizes=tuple(settings.warmup_batch_sizes),
        cpu_instances=settings.cpu_instances or (2 if cpus.usable >= 2 else 1),
    )


def build_state(settings: Settings, metrics: Metrics) -> AppState:
    """Everything the handlers share, not yet loaded."""

    def limits(manifest: Manifest) -> BatchLimits:
        # Models of dated series batch series rows, not images.
        b = settings.series_batching if inference_task(manifest).dated else settings.batching
        return BatchLimits(b.max_batch_size, b.max_queue_delay_ms, b.max_queue_size)

    cpus = process_cpus()
    options = session_options(settings, cpus)
    log.info(
        "CPUs: %d usable (host %d, affinity %d, cgroup quota %s); threads per session: %s; "
        "CPU instances: %d",
        cpus.usable,
        cpus.host,
        cpus.affinity,
        "none" if cpus.quota is None else f"{cpus.quota:g}",
        options.intra_op_threads or "ONNX Runtime's default",
        options.cpu_instances,
    )
    repository = ModelRepository(
        settings.model_dir,
        options,
        limits,
        observer=lambda m: metrics.observer(m.name),
        warmup=settings.warmup,
        serve_as=settings.model_name,
    )
    store = open_store(settings, on_evict=metrics.jobs_evicted.inc)
    # Tiles of a scene have no per-request deadline of their own: the job may run
    # for hours, but one tile must still not wait forever.
    scenes = SceneRunner(
        store,
        settings.request_timeout_s,
        settings.scene_tiles_in_flight,
        max_temp_bytes=int(settings.scene_max_temp_mb * 2**20),
        min_free_bytes=int(settings.job_min_free_mb * 2**20),
        cog_level=settings.scene_cog_level,
        cog_stream=settings.scene_cog_stream,
    )
    manager: JobManager | SharedJobs
    if settings.queue_url:
        queue = RedisQueue(
            settings.queue_url,
            replica_name(),
            settings.queue_claim_after_s,
            settings.queue_prefix,
            settings.job_ttl_s,
        )
        queue_limits = QueueLimits(
            settings.queue_unit_tiles,
            settings.queue_small_job_units,
            settings.queue_max_jobs_per_key,
            settings.queue_max_units,
            settings.job_max_resumes,
        )
        manager = SharedJobs(
            store, scenes, repository.get, queue, queue_limits, settings.scene_workers, metrics
        )
    else:
        manager = JobManager(
            store,
            scenes,
            repository.get,
            settings.scene_workers,
            settings.max_queued_jobs,
            settings.job_max_resumes,
        )
    budget = MemoryBudget(
        int(settings.memory_budget_mb * 2**20),
        int(settings.request_memory_mb * 2**20),
        wait_s=min(10.0, settings.request_timeout_s),
        setting="ATTNSERVE_REQUEST_MEMORY_MB",
    )
    scenes.budget = budget
    scenes.references = References.from_settings(settings)
    jobs = JobService(store, PredictionRunner(store, settings.request_timeout_s), manager)
    state = AppState(
        settings, metrics, repository, store, jobs, Intake(settings, budget), budget=budget
    )
    state.footprints = FootprintService(
        store,
        FootprintLimits(
            max_features=settings.footprints_max_features,
            timeout_s=settings.footprints_timeout_s,
            workers=settings.footprints_workers,
            max_waiting=settings.footprints_max_waiting,
            cache_bytes=int(settings.footprints_cache_mb * 2**20),
        ),
    )
    return state


async def _load_models(state: AppState) -> None:
    await state.repository.load()
    await state.jobs.start()
    for served in state.repository.all():
        state.metrics.model_loaded.labels(served.manifest.name, served.manifest.version).set(1)
    if state.repository.state != "ready":
        log.error("no model could be loaded from %s", state.settings.model_dir)
    frozen = tune_gc(state.settings.gc_threshold, state.settings.gc_freeze)
    log.info("garbage collection: thresholds %s, %d objects frozen", gc.get_threshold(), frozen)


async def _clean_jobs(state: AppState) -> None:
    while True:
        await asyncio.sleep(state.settings.job_cleanup_interval_s)
        try:
            removed = await asyncio.to_thread(state.store.cleanup)
        except OSError as exc:
            log.warning("job cleanup failed: %s", exc)
            continue
        if removed:
            log.info("removed %d expired jobs", removed)
        state.metrics.jobs_stored.set(state.store.count)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the lifespan loads models and starts batchers."""
    settings = settings or Settings()
    # Effective only if no raster was opened yet in this process; the server's
    # entry point calls it first thing as well.
    disable_risky_drivers()
    # One registry per app, shared by the middleware and the handlers, so that
    # several apps (tests) never collide in prometheus-client's global registry.
    app_metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, app_metrics)
        app.state.attnserve = state
        # Models load in the background so liveness and readiness answer (503)
        # while they load.
        loader = asyncio.create_task(_load_models(state), name="load-models")
        cleaner = asyncio.create_task(_clean_jobs(state), name="clean-jobs")
        trimmer = asyncio.create_task(trim_heap_periodically(30.0), name="trim-heap")
        try:
            yield
        finally:
            state.draining = True
            cleaner.cancel()
            trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await state.jobs.stop(settings.shutdown_grace_s)
            await state.repository.stop(settings.shutdown_grace_s)
            state.tiles.close()
            await asyncio.to_thread(state.store.flush)

    app = FastAPI(
        title="attnserve",
        version=__version__,
        summary="Geospatial attention models: predictions and the attention behind them",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
    )
    errors.install(app)
    for router in (
        health.router,
        models.router,
        predict.router,
        jobs.router,
        attention.router,
        tiles.router,
        stac.router,
    ):
        app.include_router(router, responses=errors.ERROR_RESPONSES)
    app.include_router(metrics.router)
    app.include_router(v2.router)
    app.include_router(viewer.router)
    keys = settings.all_api_keys()
    if keys:
        app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(
        BodyLimit,
        max_bytes=int(settings.max_upload_mb * 2**20),
        max_json_bytes=int(settings.max_json_mb * 2**20),
        read_timeout_s=settings.body_read_timeout_s,
        min_rate_bps=settings.body_min_rate_bps,
        rate_window_s=settings.body_rate_window_s,
    )
    # Outside the body limit: refused work never has its body read.
    app.add_middleware(
        Admission,
        max_in_flight=settings.max_concurrent_requests,
        max_uploads=settings.max_concurrent_uploads,
        max_uploads_per_ip=settings.max_uploads_per_ip,
        max_uploads_per_key=settings.max_uploads_per_key,
    )
    app.add_middleware(Observe, metrics=app_metrics)
    app.add_middleware(v2.OipErrorShape)
    return app
