"""Prometheus metrics: one registry per app, batch measurements labelled by model."""

from __future__ import annotations

from prometheus_client import generate_latest

from service.metrics import Metrics


def _value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_batch_observers_feed_their_own_model_s_series() -> None:
    metrics = Metrics()
    crops = metrics.observer("crops")
    crops.queue_depth(3)
    crops.batch_done(rows=4, waits_s=[0.001, 0.002, 0.2, 0.003], run_s=0.05)
    crops.batch_failed(rows=2)
    model = {"model": "crops"}
    assert _value(metrics, "attnserve_queue_depth", model) == 3
    assert _value(metrics, "attnserve_batch_size_sum", model) == 4
    assert _value(metrics, "attnserve_queue_wait_seconds_count", model) == 4
    assert _value(metrics, "attnserve_inference_duration_seconds_count", model) == 1
    assert _value(metrics, "attnserve_inference_errors_total", model) == 1
    assert _value(metrics, "attnserve_batch_size_count", {"model": "footprints"}) is None


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.jobs_evicted.inc(2)
    assert _value(first, "attnserve_jobs_evicted_total") == 2
    assert _value(second, "attnserve_jobs_evicted_total") == 0
    exposed = generate_latest(second.registry).decode()
    for name in (
        "attnserve_requests_total",
        "attnserve_in_flight_requests",
        "attnserve_jobs_stored",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in exposed


def test_the_shared_queue_s_metrics_have_the_names_dashboards_use() -> None:
    metrics = Metrics()
    metrics.queue_units.set(7)
    metrics.queue_units_in_flight.set(1)
    metrics.queue_claims.inc()
    metrics.queue_unit_seconds.labels("unit").observe(2.5)
    metrics.queue_unit_seconds.labels("finish").observe(9.0)
    assert _value(metrics, "attnserve_queue_units") == 7
    assert _value(metrics, "attnserve_queue_units_in_flight") == 1
    assert _value(metrics, "attnserve_queue_claims_total") == 1
    assert _value(metrics, "attnserve_queue_unit_seconds_sum", {"step": "unit"}) == 2.5
    assert _value(metrics, "attnserve_queue_unit_seconds_count", {"step": "finish"}) == 1
