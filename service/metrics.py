"""Prometheus metrics, one registry per app; labels never carry ids or user values."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    """Every metric the server exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "attnserve_requests", "HTTP requests", ["route", "model", "status"], registry=r
        )
        self.request_duration = Histogram(
            "attnserve_request_duration_seconds",
            "HTTP request latency",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "attnserve_in_flight_requests", "HTTP requests in flight", registry=r
        )
        self.queue_depth = Gauge(
            "attnserve_queue_depth", "Requests waiting in a model's batcher", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            "attnserve_queue_wait_seconds",
            "Time a request waited in the batcher",
            ["model"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attnserve_batch_size",
            "Rows per session run",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "attnserve_inference_duration_seconds",
            "Session run time per batch",
            ["model"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.inference_errors = Counter(
            "attnserve_inference_errors",
            "Batches that failed in the session",
            ["model"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "attnserve_model_loaded",
            "1 when a model version is loaded",
            ["model", "version"],
            registry=r,
        )
        self.jobs_stored = Gauge("attnserve_jobs_stored", "Jobs in the job store", registry=r)
        self.jobs_evicted = Counter(
            "attnserve_jobs_evicted",
            "Finished jobs deleted before their TTL to keep room on the job volume",
            registry=r,
        )

        # The shared work queue (ATTNSERVE_QUEUE_URL); idle without one.
        self.queue_units = Gauge(
            "attnserve_queue_units", "Scene units waiting in the shared queue", registry=r
        )
        self.queue_units_in_flight = Gauge(
            "attnserve_queue_units_in_flight",
            "Scene units (and finishing steps) this replica is working on",
            registry=r,
        )
        self.queue_claims = Counter(
            "attnserve_queue_claims",
            "Units taken over from a replica that went quiet past the claim timeout",
            registry=r,
        )
        self.queue_unit_seconds = Histogram(
            "attnserve_queue_unit_seconds",
            "Time one unit (step=unit) or a job's finishing step (step=finish) took",
            ["step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observer(self, model: str) -> BatchMetrics:
        """A batch observer feeding this registry for one model."""
        return BatchMetrics(self, model)


class BatchMetrics:
    """Forwards a batcher's measurements to Prometheus (see ``BatchObserver``)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._depth = metrics.queue_depth.labels(model)
        self._wait = metrics.queue_wait.labels(model)
        self._size = metrics.batch_size.labels(model)
        self._run = metrics.inference_duration.labels(model)
        self._errors = metrics.inference_errors.labels(model)

    def queue_depth(self, depth: int) -> None:
        """Set the queue depth gauge."""
        self._depth.set(depth)

    def batch_done(self, rows: int, waits_s: Sequence[float], run_s: float) -> None:
        """Record one batch."""
        self._size.observe(rows)
        self._run.observe(run_s)
        for wait in waits_s:
            self._wait.observe(wait)

    def batch_failed(self, rows: int) -> None:
        """Count a failed batch."""
        self._errors.inc()
