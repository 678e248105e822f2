"""The chart rendered by Helm's own engine (the Helm SDK's offline render, no
cluster): values validate against the schema, every template yields YAML, and
the shared-queue settings produce the resources they promise."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from tests.deploy._deploy import CHART

helm = pytest.importorskip("helm_python", reason="the Helm SDK (dev extra) is not installed")

RELEASE, NAMESPACE = "geo", "maps"
FULLNAME = f"{RELEASE}-attnserve"
JOB_ID = "Ab_d-fghijklmnopqrstuvw_"
OBJECT_STORE = {
    "enabled": True,
    "bucket": "attnserve-jobs",
    "credentials": {"existingSecret": "s3"},
}
Resources = dict[tuple[str, str], dict[str, Any]]


def render(values: dict[str, Any]) -> Resources:
    """Every rendered resource by (kind, name)."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    resources: Resources = {}
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["metadata"]["namespace"] == NAMESPACE, path
                resources[doc["kind"], doc["metadata"]["name"]] = doc
    return resources


def _container(pod_owner: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_owner["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_defaults_render_the_single_replica_server() -> None:
    resources = render({})
    kinds = sorted(kind for kind, _ in resources)
    assert kinds == [
        "ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Secret",
        "Service", "ServiceAccount",
    ]  # fmt: skip
    claim = resources["PersistentVolumeClaim", f"{FULLNAME}-jobs"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "ATTNSERVE_QUEUE_URL" not in resources["ConfigMap", FULLNAME]["data"]


def test_the_bundled_valkey_queue_shares_the_bucket_and_no_volume() -> None:
    resources = render(
        {"objectStore": OBJECT_STORE, "redis": {"enabled": True}, "autoscaling": {"enabled": True}}
    )
    assert not [key for key in resources if key[0] == "PersistentVolumeClaim"]
    data = resources["ConfigMap", FULLNAME]["data"]
    # The Service the valkey chart makes under the alias "redis": <release>-redis.
    assert data["ATTNSERVE_QUEUE_URL"] == f"redis://{RELEASE}-redis:6379/0"
    assert data["ATTNSERVE_QUEUE_CLAIM_AFTER_S"] == "30"
    assert data["ATTNSERVE_JOB_STORE"] == "s3://attnserve-jobs/jobs"
    pod = resources["Deployment", FULLNAME]["spec"]["template"]["spec"]
    jobs = next(v for v in pod["volumes"] if v["name"] == "jobs")
    assert "emptyDir" in jobs
    assert "persistentVolumeClaim" not in jobs


def test_an_external_redis_url_comes_from_its_secret() -> None:
    resources = render(
        {"objectStore": OBJECT_STORE, "queue": {"existingSecret": "redis", "secretKey": "uri"}}
    )
    assert "ATTNSERVE_QUEUE_URL" not in resources["ConfigMap", FULLNAME]["data"]
    env = _env(_container(resources["Deployment", FULLNAME]))
    assert env["ATTNSERVE_QUEUE_URL"] == {"secretKeyRef": {"name": "redis", "key": "uri"}}
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "s3"


def test_the_hpa_divides_the_shared_queue_by_the_replicas() -> None:
    resources = render(
        {
            "objectStore": OBJECT_STORE,
            "redis": {"enabled": True},
            "autoscaling": {
                "enabled": True,
                "targetCPUUtilizationPercentage": None,
                "sharedQueue": {"enabled": True, "unitsPerReplica": "12"},
            },
        }
    )
    (metric,) = resources["HorizontalPodAutoscaler", FULLNAME]["spec"]["metrics"]
    assert metric == {
        "type": "External",
        "external": {
            "metric": {
                "name": "attnserve_queue_units",
                "selector": {"matchLabels": {"service": FULLNAME}},
            },
            "target": {"type": "AverageValue", "averageValue": "12"},
        },
    }


def test_the_batch_job_works_one_jobs_units_with_the_servers_settings() -> None:
    resources = render(
        {
            "objectStore": OBJECT_STORE,
            "queue": {"existingSecret": "redis"},
            "batch": {"enabled": True, "jobId": JOB_ID, "completions": 6, "parallelism": 3},
        }
    )
    job = resources["Job", f"{FULLNAME}-units-ab-d-fghijklmnopqrstuvw"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 6, 3)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = _container(job)
    assert container["args"] == ["scene", "run", "--units-of", JOB_ID]
    assert container["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    env = _env(container)
    assert env["ATTNSERVE_QUEUE_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Its pods are not the Service's: no HTTP traffic goes to a batch worker.
    selector = resources["Service", FULLNAME]["spec"]["selector"]
    labels = spec["template"]["metadata"]["labels"]
    assert not selector.items() <= labels.items()
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts == {"tmp", "jobs", "api-keys"}
    assert next(v for v in pod["volumes"] if v["name"] == "jobs")["emptyDir"]


def test_the_servers_settings_accept_the_rendered_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = pytest.importorskip("service.config")
    resources = render(
        {
            "objectStore": OBJECT_STORE,
            "redis": {"enabled": True},
            "queue": {"claimAfterS": 2.5},
            "auth": {"enabled": False},
        }
    )
    for name in [n for n in os.environ if n.startswith("ATTNSERVE_")]:
        monkeypatch.delenv(name)
    for key, value in resources["ConfigMap", FULLNAME]["data"].items():
        monkeypatch.setenv(key, value)
    settings = config.Settings()
    assert settings.job_store == "s3://attnserve-jobs/jobs"
    if "queue_url" not in config.Settings.model_fields:
        pytest.xfail("the server has no shared queue settings yet")
    assert settings.queue_url == f"redis://{RELEASE}-redis:6379/0"
    assert settings.queue_claim_after_s == 2.5


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "queue-without-object-store": ({"queue": {"existingSecret": "redis"}}, "objectStore"),
    "batch-without-job-id": (
        {"objectStore": OBJECT_STORE, "redis": {"enabled": True}, "batch": {"enabled": True}},
        "jobId",
    ),
    "hpa-on-a-queue-that-is-not-there": (
        {"autoscaling": {"enabled": True, "sharedQueue": {"enabled": True}}},
        "redis",
    ),
}


@pytest.mark.parametrize(("values", "names"), REFUSED.values(), ids=REFUSED.keys())
def test_contradictory_values_are_refused_by_helm(values: dict[str, Any], names: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert names in str(caught.value)
