"""Settings: one class, env prefix ``ATTNSERVE_``, nested fields joined with ``__``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models" / "shipped"
KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class CudaSettings(BaseModel):
    """Options handed to ONNX Runtime's CUDA execution provider."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    device_id: int = Field(0, ge=0)
    gpu_mem_limit_mb: int | None = Field(None, gt=0)
    """Arena limit; none = no limit."""
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    io_binding: bool = True
    cuda_graph: bool = False
    """Capture CUDA graphs at warm-up for each warm-up batch size and replay them; batches are
    padded up to the next warm-up batch size.
    """


class BatchingSettings(BaseModel):
    """One model's dynamic batcher.

    ``max_batch_size`` counts batch rows: image tiles for segmentation models,
    series (parcels or pixels) for temporal models.
    """

    # 4 by default: on CPU a larger batch adds memory (scene tiles above all) but
    # no throughput; GPU deployments raise it.
    max_batch_size: int = Field(4, ge=1, le=65536)
    max_queue_delay_ms: float = Field(5.0, ge=0, le=10_000)
    max_queue_size: int = Field(64, ge=1, le=100_000)


class Settings(BaseSettings):
    """Every setting of the server; each has an env var ``ATTNSERVE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="ATTNSERVE_",
        env_nested_delimiter="__",
        extra="ignore",
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    model_dir: Path = SHIPPED_MODELS
    model_name: str | None = None
    """Serve the model directory's one model (all its versions) under this name rather than its
    manifest's, as KServe's runtime arguments name a model after its InferenceService; with several
    models in the directory, one must have this name.
    """
    model_downloads: bool = True
    """Hand out served models' ONNX files at ``GET /models/{ref}/onnx`` (and link them from each
    job's STAC Item). Off where the weights are not for the API's users: the route then answers
    404 and the STAC Item's model asset is the manifest."""
    providers: list[str] = Field(default_factory=lambda: list(KNOWN_PROVIDERS))
    """ONNX Runtime execution providers, in order of preference."""
    require_cuda: bool = False
    """Not ready unless CUDA is active."""
    cuda: CudaSettings = Field(default_factory=CudaSettings)
    intra_op_threads: int = Field(0, ge=0)
    """0 = ONNX Runtime's default."""
    cpu_instances: int = Field(0, ge=0, le=64)
    """On CPU, sessions per model that run batches side by side while requests queue, each with its
    share of the cores; a request alone still runs on one session with every core. Each instance
    holds its own working memory. 0: 2 where the server has 2 or more cores, else 1.
    """
    malloc_arena_max: int = Field(2, ge=0)
    """Most glibc malloc arenas (like MALLOC_ARENA_MAX); fewer arenas hold less freed memory across
    threads; 0 leaves glibc's default (8 per core).
    """
    gc_freeze: bool = True
    """Once models are loaded, exempt every object alive then from Python's garbage collections
    (gc.freeze): shorter collection pauses under load.
    """
    gc_threshold: tuple[int, int, int] = (50_000, 20, 100)
    """Python's garbage collection thresholds per generation, set once models are loaded: fewer
    collections under load ([700, 10, 10] is Python's own).
    """
    memory_pattern: bool = True
    """ONNX Runtime plans one memory block per run (its default); off lowers peak memory of large
    batches (e.g. scene tiles) at some speed.
    """
    intra_op_spinning: bool = False
    """Operator threads spin-wait for work (ONNX Runtime's default) instead of sleeping; spinning
    steals whole cores from the rest of the server on small CPUs.
    """
    warmup: bool = True
    warmup_batch_sizes: list[int] = Field(default_factory=lambda: [1])
    """Batch sizes run at warm-up; with CUDA graphs, the buckets batches are padded to (e.g.
    [1,2,4,8]).
    """

    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    series_batching: BatchingSettings = Field(
        default_factory=lambda: BatchingSettings(
            max_batch_size=8192, max_queue_delay_ms=5.0, max_queue_size=256
        )
    )
    request_timeout_s: float = Field(60.0, gt=0, le=3600)

    job_dir: Path = Path("var/jobs")
    job_ttl_s: float = Field(24 * 3600.0, gt=0)
    job_fsync: bool = True
    """Fsync each job's files before it becomes visible; off trades durability across a power loss
    for less write latency per request.
    """
    job_write_behind: bool = False
    """Answer synchronous predictions before their job is on disk (this process serves it from
    memory meanwhile, other replicas wait for it up to job_write_behind_wait_s); a crash before
    then loses it.
    """
    job_write_behind_wait_s: float = Field(2.0, ge=0, le=30)
    """With write-behind on: a request for a job made less than this long ago that is not on disk
    yet waits up to this long for it (another replica may still be writing it) before its 404.
    """
    job_cleanup_interval_s: float = Field(300.0, gt=0)
    job_min_free_mb: float = Field(1024.0, ge=0)
    """Keep this much space free on the job volume: the oldest finished jobs are deleted before
    their TTL to make room for new ones (0 = never).
    """
    job_max_mb: float = Field(0.0, ge=0)
    """Most space this server's jobs may take; the oldest finished jobs are deleted before their TTL
    beyond it (0 = no cap). For volumes whose limit the filesystem does not show, such as an
    emptyDir with a sizeLimit.
    """
    job_store: str | None = None
    """Where jobs are kept: ``s3://bucket/prefix`` for an S3-API object store (endpoint and
    credentials from the standard AWS variables), or a local directory; unset, job_dir. With an
    object store, job_dir holds only running scene jobs' files.
    """
    presign: bool = False
    """With an object store: downloads of a job's files redirect (307) to a presigned URL of the
    object rather than stream through this server.
    """
    presign_ttl_s: float = Field(900.0, gt=0, le=7 * 24 * 3600)
    """How long a presigned download URL stays valid."""

    input_allowlist: list[str] = Field(default_factory=list)
    """URL prefixes (``https://host/path/``, ``s3://bucket/``) that ``/predict`` may read inputs
    from by reference (``href``, STAC Items), as a JSON list; empty: references are off. A host
    that resolves to a private, loopback or link-local address is read only where a prefix names
    that address itself.
    """
    input_timeout_s: float = Field(20.0, gt=0, le=600)
    """Longest wait to connect to, or to read from, an input by reference."""
    input_max_read_mb: float = Field(16384.0, gt=0)
    """Most bytes read from one input by reference, all its ranged requests together."""
    max_upload_mb: float = Field(256.0, gt=0)
    max_sync_pixels: int = Field(2048 * 2048, ge=64 * 64)
    """Largest synchronous image."""
    max_sync_series_pixels: int = Field(512 * 512, ge=1)
    """Largest synchronous dated raster stack, in pixels."""
    max_json_mb: float = Field(16.0, gt=0)
    max_scene_pixels: int = Field(30_000 * 30_000, ge=64 * 64)
    """Largest scene processed as a tiled job."""
    scene_workers: int = Field(1, ge=0, le=16)
    """Scene jobs run at the same time (with a shared queue: units; 0 there: this replica accepts
    and plans scene jobs but leaves their units to other replicas).
    """
    max_queued_jobs: int = Field(100, ge=1)
    job_max_resumes: int = Field(2, ge=0, le=100)
    """Times a scene job that was running when the server stopped or died is run again on start;
    after that it is failed with the reason.
    """
    queue_url: str | None = None
    """A shared work queue for scene jobs: ``redis://host:port/db`` (or ``rediss://``). Every
    replica then takes units of every job, and the job store must be one they share (an object
    store). Unset: each replica runs the scene jobs it accepted, in-process.
    """
    queue_claim_after_s: float = Field(30.0, ge=0.5, le=86400)
    """A unit whose replica has not touched it for this long (it died) is taken by another."""
    queue_unit_tiles: int = Field(16, ge=1, le=100_000)
    """Tiles per work unit of a scene job (whole rows of tiles, or part of a wider row)."""
    queue_small_job_units: int = Field(8, ge=0)
    """Jobs of at most this many units go before larger ones (they never wait behind them)."""
    queue_max_jobs_per_key: int = Field(10, ge=1)
    """Scene jobs one API key (or all anonymous clients) may have queued or running (429)."""
    queue_max_units: int = Field(100_000, ge=0)
    """Units the shared queue may hold, every job together; past it new scene jobs get 503
    (0: no cap).
    """
    queue_prefix: str = Field("attnserve:", min_length=1, max_length=64)
    """Prefix of every Redis key, so deployments may share one Redis."""
    scene_max_temp_mb: float = Field(0.0, ge=0)
    """Most disk one scene job's unfinished outputs may take; past it the job fails with the reason
    (0: no cap, but the job volume keeps job_min_free_mb free).
    """
    scene_cog_level: int = Field(1, ge=1, le=9)
    """Compression level of scene jobs' COGs, deflate or zstd alike: 1, the fastest, by default."""
    scene_cog_stream: bool = True
    """Write float deflate COGs while the tiles come (finishing in seconds, a block row of each
    output held); false: every COG made by GDAL after the last tile."""
    footprints_max_features: int = Field(50_000, ge=1)
    """Most polygons in one footprints answer (422 past it)."""
    footprints_timeout_s: float = Field(120.0, gt=0, le=3600)
    """Longest one footprints extraction may take (422). A 16384 x 16384 scene's took 38 s on
    2 busy cores, so the default leaves such scenes room."""
    footprints_cache_mb: float = Field(64.0, ge=0)
    """Memory for footprints answers kept per job and parameters."""
    footprints_workers: int = Field(2, ge=1, le=16)
    """Footprints extractions run at the same time, each a process on one core."""
    footprints_max_waiting: int = Field(8, ge=0)
    """Footprints extractions waiting for a worker; more get 503."""
    scene_tiles_in_flight: int = Field(16, ge=1, le=1024)
    max_bands: int = Field(512, ge=1)
    resample_tolerance: float = Field(1.25, ge=1.0)
    """An input whose ground resolution differs from a model's gsd_m by more than this factor is
    resampled to the model's resolution (and outputs back).
    """
    resample_max_factor: float = Field(8.0, ge=1.0)
    """An input further than this factor from a model's gsd_m runs as sent, with a warning in the
    answer, instead of being resampled.
    """
    max_dates: int = Field(366, ge=1)
    max_json_items: int = Field(10_000, ge=1)
    """Parcels in one JSON request."""
    memory_budget_mb: float = Field(2048.0, gt=0)
    """Memory that requests and scene jobs in flight may hold together (decoded pixels, model
    activations, outputs), reserved before anything is decoded; a request waits for room, then
    gets 503.
    """
    request_memory_mb: float = Field(1536.0, gt=0)
    """Most memory one request or scene job may hold: a larger upload runs as a scene job, a larger
    /v2 tensor or scene tile is refused with 413.
    """

    api_keys: list[SecretStr] = Field(default_factory=list)
    """Accepted Bearer API keys; empty = no auth."""
    api_keys_file: Path | None = None
    """File with one API key per line (e.g. a mounted secret)."""

    docs_enabled: bool = True
    shutdown_grace_s: float = Field(30.0, ge=0)
    drain_delay_s: float = Field(0.0, ge=0, le=300)
    """After SIGTERM, seconds to keep answering (readyz 503, new work 503) before refusing
    connections, so load balancers notice first.
    """
    max_concurrent_requests: int = Field(64, ge=0)
    """In-flight requests (probes and metrics aside); 0 = no limit."""
    body_read_timeout_s: float = Field(30.0, gt=0, le=3600)
    """Longest wait for the next chunk of a request body (408)."""
    keep_alive_s: int = Field(5, ge=1, le=300)
    """Idle keep-alive connection timeout."""
    request_head_timeout_s: float = Field(10.0, gt=0, le=600)
    """Longest a client may take to send a request's headers."""
    body_min_rate_bps: float = Field(1024.0, ge=0)
    """Slowest a request body may arrive, in bytes/s over each window of body_rate_window_s (the
    first window is the grace period); slower gets 408. 0: off.
    """
    body_rate_window_s: float = Field(10.0, gt=0, le=600)
    max_concurrent_uploads: int = Field(256, ge=0)
    """Request bodies being received at once (they hold no request slot meanwhile); more get 503. 0
    = no limit.
    """
    max_uploads_per_ip: int = Field(128, ge=0)
    """Bodies being received at once from one client address (429)."""
    max_uploads_per_key: int = Field(128, ge=0)
    """Bodies being received at once with one API key (429)."""

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one execution provider is needed")
        unknown = [p for p in value if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; known: {list(KNOWN_PROVIDERS)}")
        if len(set(value)) != len(value):
            raise ValueError("providers must not repeat")
        return value

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model_name {value!r} must be alphanumeric with - or _")
        return value

    @field_validator("job_store")
    @classmethod
    def _job_store(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme, sep, rest = value.partition("://")
        if sep and (scheme != "s3" or not rest.split("/")[0]):
            raise ValueError("job_store must be s3://bucket[/prefix] or a local directory")
        return value.rstrip("/") if sep else value

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("queue_url must be redis://host:port/db, rediss://... or unix://...")
        return value

    @field_validator("input_allowlist")
    @classmethod
    def _allowlist(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parts = urlsplit(prefix)
            if parts.scheme not in ("https", "http", "s3") or not parts.hostname:
                raise ValueError(
                    f"input_allowlist: {prefix!r} is not an https://, http:// or s3:// prefix"
                )
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError(f"input_allowlist: {prefix!r} must be a plain URL prefix")
            if parts.path in ("", "/") and not prefix.endswith("/"):
                raise ValueError(f"input_allowlist: {prefix!r} must end with / after the host")
        return value

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _batch_sizes(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= b <= 65536 for b in value):
            raise ValueError("warmup_batch_sizes must be one or more sizes from 1 to 65536")
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.cuda.cuda_graph and max(self.warmup_batch_sizes) < self.batching.max_batch_size:
            raise ValueError(
                "cuda.cuda_graph needs a warm-up batch size of at least batching.max_batch_size "
                f"({self.batching.max_batch_size}), or full batches would run without a graph"
            )
        if self.scene_workers == 0 and not self.queue_url:
            raise ValueError("scene_workers may be 0 only with a shared queue (queue_url)")
        if self.require_cuda and "CUDAExecutionProvider" not in self.providers:
            raise ValueError("require_cuda is set but CUDAExecutionProvider is not in providers")
        for key in self.all_api_keys():
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters long")
        return self

    def all_api_keys(self) -> list[str]:
        """Keys from settings and from the keys file (blank lines and # comments skipped)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text()
            except OSError as exc:
                raise ValueError(f"api_keys_file cannot be read: {exc.strerror}") from None
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys
