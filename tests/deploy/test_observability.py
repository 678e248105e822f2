"""Compose, Prometheus and the Grafana dashboard; then a real server started
the way the CPU image starts it, checked against the dashboard's metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy._deploy import (
    CONTRACT_METRICS,
    DOCKER,
    QUEUE_METRICS,
    ROOT,
    VENV_BIN,
    Dockerfile,
    contract_metric_names,
    dashboard_metric_names,
    dashboard_queries,
    exposed_metric_names,
)

DASHBOARD = DOCKER / "grafana" / "dashboards" / "attnserve.json"
READY_TIMEOUT_S = 120.0
SHUTDOWN_GRACE_S = 10
# The image serves COPY models/shipped/ /models/; a checkout without shipped
# models yet can point the live test at another model repository.
MODEL_DIR = Path(os.environ.get("DEPLOY_TEST_MODEL_DIR", ROOT / "models" / "shipped"))


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# ------------------------------------------------------------------ static
def test_compose_stack() -> None:
    compose = _yaml(DOCKER / "compose.yaml")
    services = compose["services"]
    # The object-store profile's services start only with --profile s3.
    plain = {name for name, svc in services.items() if not svc.get("profiles")}
    assert plain == {"attnserve", "prometheus", "grafana"}
    app = services["attnserve"]
    assert app["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.cpu"}
    assert (DOCKER / app["build"]["context"] / app["build"]["dockerfile"]).is_file()
    assert any(str(p).endswith(":8000") for p in app["ports"])
    assert "jobs:/var/lib/attnserve/jobs" in app["volumes"]
    assert app["environment"]["ATTNSERVE_JOB_DIR"] == "/var/lib/attnserve/jobs"
    assert app["read_only"] is True
    assert "/tmp" in app["tmpfs"]
    # Docker waits this long after SIGTERM: longer than the server's drain.
    grace = int(str(app["stop_grace_period"]).rstrip("s"))
    assert grace > int(app["environment"]["ATTNSERVE_SHUTDOWN_GRACE_S"])
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image
        assert not image.endswith(":latest")
    # Every bind mount exists in the repository.
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), source
    assert set(compose["volumes"]) >= {"jobs"}


def test_prometheus_scrapes_the_server() -> None:
    compose = _yaml(DOCKER / "compose.yaml")
    config = _yaml(DOCKER / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["attnserve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["attnserve:8000"]
    host, port = targets[0].split(":")
    assert host in compose["services"]
    cmd = Dockerfile.read(DOCKER / "Dockerfile.cpu").command()
    assert cmd[cmd.index("--port") + 1] == port
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_provisioning() -> None:
    compose = _yaml(DOCKER / "compose.yaml")
    grafana = compose["services"]["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    prov = DOCKER / "grafana" / "provisioning"
    datasources = _yaml(prov / "datasources" / "prometheus.yaml")["datasources"]
    assert datasources[0]["type"] == "prometheus"
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = _yaml(prov / "dashboards" / "attnserve.yaml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_covers_the_essentials(dashboard: dict) -> None:
    assert dashboard["uid"] == "attnserve"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "p50", "p95", "p99", "queue depth", "batch size"):
        assert topic in titles, topic
    assert "inference time" in titles
    assert "error" in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries = dashboard_queries(dashboard)
    assert any("histogram_quantile(0.99" in q for q in queries)
    for q in queries:
        assert q.count("(") == q.count(")"), q
        assert q.count("{") == q.count("}"), q


def test_dashboard_metrics_are_in_the_contract(dashboard: dict) -> None:
    used = dashboard_metric_names(dashboard)
    assert used - contract_metric_names() == set()
    # Every metric of the contract is on the dashboard.
    bases = {
        n.removesuffix(s) for n in used for s in ("_bucket", "_sum", "_count") if n.endswith(s)
    }
    assert set(CONTRACT_METRICS) <= used | bases


def test_the_shared_queue_has_its_row(dashboard: dict) -> None:
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["title"] == "Shared scene queue")
    assert panels[start]["type"] == "row"
    end = next((i for i, p in enumerate(panels) if i > start and p["type"] == "row"), None)
    queue = panels[start + 1 : end]
    by_metric = {
        name: [p["title"].lower() for p in queue if name in dashboard_metric_names({"panels": [p]})]
        for name in ("attnserve_queue_units", "attnserve_queue_units_in_flight")
    }
    assert by_metric["attnserve_queue_units"] == ["shared queue depth (units waiting)"]
    assert by_metric["attnserve_queue_units_in_flight"] == ["units in flight per replica"]
    exprs = [t["expr"] for p in queue for t in p.get("targets", [])]
    # Every replica reports the queue's global depth: summing would count it per replica.
    assert "max(attnserve_queue_units)" in exprs
    assert not any("sum(attnserve_queue_units)" in e for e in exprs)
    assert any("by (instance)" in e and "units_in_flight" in e for e in exprs)
    assert any("increase(attnserve_queue_claims_total" in e for e in exprs)
    assert any(e.startswith("histogram_quantile(0.95") and "queue_unit_seconds" in e for e in exprs)


def _missing_from(exposed: set[str], dashboard: dict) -> set[str]:
    """Contract and dashboard metrics the server does not export; only the queue's
    may be missing, while the shared queue has not landed (reported as xfail)."""
    missing = (set(CONTRACT_METRICS) | dashboard_metric_names(dashboard)) - exposed
    queue = {n for n in missing if any(n.startswith(q) for q in QUEUE_METRICS)}
    assert missing == queue, f"metrics the server lacks: {sorted(missing)}"
    return missing


def test_server_metrics_registry_matches_the_contract(dashboard: dict) -> None:
    metrics = pytest.importorskip("service.metrics")
    from prometheus_client import generate_latest

    exposed = exposed_metric_names(generate_latest(metrics.Metrics().registry).decode())
    missing = _missing_from(exposed, dashboard)
    if missing:
        pytest.xfail(f"shared queue metrics not exported yet: {sorted(missing)}")


# ------------------------------------------------------------------ live
def _local_command(port: int) -> list[str]:
    """The CPU image's ENTRYPOINT + CMD, run with this venv's console script."""
    command = Dockerfile.read(DOCKER / "Dockerfile.cpu").command()
    assert command[0] == "attnserve"
    script = VENV_BIN / "attnserve"
    if script.exists():
        argv = [str(script)]
    else:  # not installed as a console script: same entry point via the interpreter
        argv = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]
    args = list(command[1:])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    return argv + args


def _local_env(tmp_path: Path) -> dict[str, str]:
    """The image's ATTNSERVE_* settings, its paths mapped onto this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSERVE_")}
    image_env = Dockerfile.read(DOCKER / "Dockerfile.cpu").env()
    env.update({k: v for k, v in image_env.items() if k.startswith("ATTNSERVE_")})
    # COPY models/shipped/ /models/ in the image.
    assert env["ATTNSERVE_MODEL_DIR"] == "/models"
    env["ATTNSERVE_MODEL_DIR"] = str(MODEL_DIR)
    env["ATTNSERVE_JOB_DIR"] = str(tmp_path / "jobs")
    env["ATTNSERVE_SHUTDOWN_GRACE_S"] = str(SHUTDOWN_GRACE_S)
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _write_geotiff(path: Path) -> None:
    import numpy as np

    from tests.helpers.geotiff import write_geotiff

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(3, 256, 256), dtype=np.uint8)
    write_geotiff(path, data, crs="EPSG:32633", photometric="RGB")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    pytest.importorskip("service.app")
    pytest.importorskip("onnxruntime")
    if not any(MODEL_DIR.glob("*.onnx")):
        pytest.skip(f"no models in {MODEL_DIR}")
    from tests.helpers.server import LiveServer

    log = tmp_path / "server.log"
    env = _local_env(tmp_path)
    live = LiveServer({}, log, command=_local_command, cwd=tmp_path, base_env=env)
    try:
        live.wait_ready(READY_TIMEOUT_S)
        yield live.url, live.proc, log
    finally:
        live.stop(timeout_s=0)


def test_live_server_exports_the_dashboard_metrics(
    server: tuple[str, subprocess.Popen[bytes], Path], tmp_path: Path, dashboard: dict
) -> None:
    import httpx

    from tests.helpers.bodies import upload

    base, proc, log = server

    assert httpx.get(f"{base}/healthz", timeout=5.0).status_code == 200

    image = tmp_path / "tile.tif"
    _write_geotiff(image)
    r = httpx.post(f"{base}/predict", **upload(image.read_bytes()), timeout=120.0)
    assert r.status_code == 200, f"{r.status_code} {r.text[:1000]}\n{log.read_text()[-4000:]}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body.get("job_id"), str)
    assert body["job_id"]

    metrics = httpx.get(f"{base}/metrics", timeout=5.0)
    assert metrics.status_code == 200
    exposed = exposed_metric_names(metrics.text)
    missing = _missing_from(exposed, dashboard)
    # The request just served was counted.
    assert any(
        line.startswith("attnserve_requests_total{") and 'model="footprints"' in line
        for line in metrics.text.splitlines()
    )

    # SIGTERM, as docker stop / the kubelet send it: the server drains and exits.
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=SHUTDOWN_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"no exit within {SHUTDOWN_GRACE_S + 5}s of SIGTERM:\n{log.read_text()[-4000:]}"
        )
    elapsed = time.monotonic() - started
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{log.read_text()[-4000:]}"
    assert elapsed <= SHUTDOWN_GRACE_S + 5
    if missing:
        pytest.xfail(f"shared queue metrics not exported yet: {sorted(missing)}")
