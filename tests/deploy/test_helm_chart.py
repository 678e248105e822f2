"""The Helm chart, checked without helm: values against the schema, template
syntax and references, and the settings the chart hands the server."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy._deploy import (
    CHART,
    TEMPLATES,
    block_errors,
    defined_helpers,
    included_helpers,
    lookup_path,
    template_files,
    values_paths,
)

Values = dict[str, Any]


@pytest.fixture(scope="module")
def values() -> Values:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _set(path: str, value: Any) -> Callable[[Values], None]:
    def change(v: Values) -> None:
        *parents, leaf = path.split(".")
        node = v
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return change


def _errors(validator: jsonschema.Draft7Validator, v: Values) -> list[str]:
    return [e.message for e in validator.iter_errors(v)]


# ------------------------------------------------------------------ Chart.yaml
def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "attnserve" == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert isinstance(chart["appVersion"], str)


# ------------------------------------------------------------------ schema
def test_default_values_validate(validator: jsonschema.Draft7Validator, values: Values) -> None:
    assert _errors(validator, values) == []


OBJECT_STORE = [_set("objectStore.enabled", True), _set("objectStore.bucket", "my-jobs")]

ACCEPTED = {
    "autoscaling-queue-depth": [
        _set("autoscaling.enabled", True),
        _set("autoscaling.targetCPUUtilizationPercentage", None),
        _set("autoscaling.queueDepth.enabled", True),
    ],
    "gpu-mem-limit": [_set("config.cuda.gpuMemLimitMb", 20000)],
    "existing-secret": [_set("auth.existingSecret", "my-keys")],
    "api-keys": [_set("auth.apiKeys", ["k" * 32, "second-key-0123456789"])],
    "cpu-only": [
        _set("gpu.enabled", False),
        _set("gpu.count", 0),
        _set("config.providers", ["CPUExecutionProvider"]),
    ],
    "mig": [_set("gpu.resourceName", "nvidia.com/mig-1g.10gb")],
    "pdb-percent": [_set("podDisruptionBudget.minAvailable", "50%")],
    "runtime-class": [_set("runtimeClassName", "nvidia")],
    "rwx-existing-claim": [
        _set("persistence.existingClaim", "jobs"),
        _set("persistence.accessMode", "ReadWriteMany"),
    ],
    "grace": [_set("shutdown.terminationGracePeriodSeconds", 120)],
    "strategy": [_set("strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0}})],
    "helm-global": [_set("global", {"imageRegistry": "example.org"})],
    "float-queue-delay": [_set("config.batching.maxQueueDelayMs", 2.5)],
    "object-store-keys": [
        _set("objectStore.enabled", True),
        _set("objectStore.bucket", "my-jobs"),
        _set("objectStore.endpoint", "http://minio.storage:9000"),
        _set("objectStore.credentials.existingSecret", "s3-keys"),
    ],
    "object-store-irsa": [
        _set("objectStore.enabled", True),
        _set("objectStore.bucket", "my-jobs"),
        _set("objectStore.irsaRoleArn", "arn:aws:iam::123456789012:role/attnserve"),
        _set("replicaCount", 3),
    ],
    "queue-external-redis": [*OBJECT_STORE, _set("queue.existingSecret", "redis-url")],
    "queue-bundled-valkey": [*OBJECT_STORE, _set("redis.enabled", True)],
    "queue-hpa-and-batch": [
        *OBJECT_STORE,
        _set("redis.enabled", True),
        _set("autoscaling.enabled", True),
        _set("autoscaling.targetCPUUtilizationPercentage", None),
        _set("autoscaling.sharedQueue.enabled", True),
        _set("batch.enabled", True),
        _set("batch.jobId", "Ab_d-fghijklmnopqrstuvw_"),
        _set("queue.claimAfterS", 2.5),
    ],
}


@pytest.mark.parametrize("changes", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_good_values_accepted(
    validator: jsonschema.Draft7Validator, values: Values, changes: list
) -> None:
    v = copy.deepcopy(values)
    for change in changes:
        change(v)
    assert _errors(validator, v) == []


REJECTED = {
    "negative-gpu-count": _set("gpu.count", -1),
    "string-replica-count": _set("replicaCount", "2"),
    "negative-replica-count": _set("replicaCount", -1),
    "unknown-top-level-key": _set("replicas", 2),
    "unknown-nested-key": _set("config.maxBatch", 4),
    "bad-pull-policy": _set("image.pullPolicy", "Sometimes"),
    "bad-cudnn-search": _set("config.cuda.cudnnConvAlgoSearch", "FAST"),
    "bad-log-level": _set("config.logLevel", "verbose"),
    "unknown-provider": _set("config.providers", ["TensorrtExecutionProvider"]),
    "no-provider": _set("config.providers", []),
    "bad-access-mode": _set("persistence.accessMode", "ReadOnlyMany"),
    "bad-size": _set("persistence.size", "ten gigs"),
    "port-out-of-range": _set("service.port", 70000),
    "zero-batch": _set("config.batching.maxBatchSize", 0),
    "zero-grace": _set("shutdown.terminationGracePeriodSeconds", 0),
    "cpu-target-over-100": _set("autoscaling.targetCPUUtilizationPercentage", 150),
    "short-api-key": _set("auth.apiKeys", ["abc"]),
    "bad-digest": _set("image.digest", "latest"),
    "bad-service-type": _set("service.type", "Headless"),
    "gpu-count-float": _set("gpu.count", 1.5),
    "bad-resource-name": _set("gpu.resourceName", "gpu"),
    "bad-scrape-interval": _set("serviceMonitor.interval", "often"),
    "object-store-without-bucket": _set("objectStore.enabled", True),
    "object-store-bad-bucket": _set("objectStore.bucket", "My_Bucket"),
    "object-store-bad-endpoint": _set("objectStore.endpoint", "minio:9000"),
    "object-store-bad-role": _set("objectStore.irsaRoleArn", "attnserve-role"),
    "queue-without-object-store": _set("queue.existingSecret", "redis-url"),
    "bundled-valkey-without-object-store": _set("redis.enabled", True),
    "two-queues": [*OBJECT_STORE, _set("redis.enabled", True), _set("queue.existingSecret", "u")],
    "shared-queue-hpa-without-queue": _set("autoscaling.sharedQueue.enabled", True),
    "batch-without-queue": [
        *OBJECT_STORE,
        _set("batch.enabled", True),
        _set("batch.jobId", "A" * 24),
    ],
    "batch-without-job": [*OBJECT_STORE, _set("redis.enabled", True), _set("batch.enabled", True)],
    "batch-bad-job-id": _set("batch.jobId", "not/a/job"),
    "zero-claim-after": _set("queue.claimAfterS", 0),
    "zero-batch-workers": _set("batch.parallelism", 0),
}


@pytest.mark.parametrize("change", REJECTED.values(), ids=REJECTED.keys())
def test_bad_values_rejected(
    validator: jsonschema.Draft7Validator, values: Values, change: Callable[[Values], None] | list
) -> None:
    v = copy.deepcopy(values)
    for one in change if isinstance(change, list) else [change]:
        one(v)
    assert _errors(validator, v), "expected the schema to reject this"


def test_every_values_key_is_in_the_schema(values: Values) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: Any, sch: dict, path: str) -> None:
        if not isinstance(node, dict) or "properties" not in sch:
            return
        for key, sub in node.items():
            assert key in sch["properties"], f"{path}{key} is not described by the schema"
            walk(sub, sch["properties"][key], f"{path}{key}.")

    walk(values, schema, "")


# ------------------------------------------------------------------ templates
EXPECTED_TEMPLATES = {
    "_helpers.tpl",
    "NOTES.txt",
    "batch-job.yaml",
    "configmap.yaml",
    "deployment.yaml",
    "hpa.yaml",
    "ingress.yaml",
    "networkpolicy.yaml",
    "pdb.yaml",
    "pvc.yaml",
    "secret.yaml",
    "service.yaml",
    "serviceaccount.yaml",
    "servicemonitor.yaml",
}


def test_templates_present() -> None:
    assert {p.name for p in template_files()} == EXPECTED_TEMPLATES


@pytest.mark.parametrize("name", sorted(EXPECTED_TEMPLATES))
def test_template_blocks_balance(name: str) -> None:
    assert block_errors((TEMPLATES / name).read_text()) == []


def test_block_checker_catches_mistakes() -> None:
    assert block_errors("{{- if .Values.a }}x") == ["line 1: if never closed"]
    assert block_errors("x{{- end }}") == ["line 1: end without an open block"]
    assert block_errors("{{ .Values.a }") != []
    assert block_errors("{{/* if */}}{{ with .x }}{{ else }}{{ end }}") == []


def test_values_paths_exist(values: Values) -> None:
    used: set[str] = set()
    missing = []
    for path in template_files():
        for dotted in values_paths(path.read_text()):
            used.add(dotted)
            if not lookup_path(values, dotted):
                missing.append(f"{path.name}: .Values.{dotted}")
    assert missing == []
    # The checker saw the templates' references (guards against a broken regex).
    assert len(used) >= 60, len(used)


def test_includes_name_defined_helpers() -> None:
    defined = defined_helpers()
    helpers_text = (TEMPLATES / "_helpers.tpl").read_text()
    assert defined == set(re.findall(r'define\s+"([^"]+)"', helpers_text))
    used: set[str] = set()
    for path in template_files():
        names = included_helpers(path.read_text())
        assert names <= defined, f"{path.name}: undefined {sorted(names - defined)}"
        used |= names
    assert defined <= used, f"unused helpers: {sorted(defined - used)}"
    for path in template_files():
        for ref in re.findall(r'\$\.Template\.BasePath\s+"/([^"]+)"', path.read_text()):
            assert (TEMPLATES / ref).is_file(), ref


@pytest.mark.parametrize("name", sorted(EXPECTED_TEMPLATES - {"_helpers.tpl", "NOTES.txt"}))
def test_resources_are_conventional(name: str) -> None:
    text = (TEMPLATES / name).read_text()
    assert re.search(r"^apiVersion: \S+$", text, re.M)
    assert re.search(r"^kind: [A-Z]\w+$", text, re.M)
    assert "namespace: {{ .Release.Namespace }}" in text
    assert '{{- include "attnserve.labels" . | nindent 4 }}' in text
    assert re.search(
        r'name: \{\{ include "attnserve\.(fullname|serviceAccountName|jobsClaimName)" \. \}\}', text
    )


# ------------------------------------------------------------------ content
@pytest.fixture(scope="module")
def deployment() -> str:
    """The Deployment with the helpers its pod is made of (shared with the batch Job)."""
    return (TEMPLATES / "deployment.yaml").read_text() + (TEMPLATES / "_helpers.tpl").read_text()


@pytest.mark.parametrize(
    "helper", ["podIdentity", "placement", "volumeMounts", "volumes", "env", "resources"]
)
def test_the_batch_workers_pods_are_made_like_the_servers(helper: str) -> None:
    use = f'include "attnserve.{helper}" .'
    for name in ("deployment.yaml", "batch-job.yaml"):
        assert use in (TEMPLATES / name).read_text(), name


def test_gpu_scheduling(values: Values, deployment: str) -> None:
    assert values["gpu"] == {"enabled": True, "count": 1, "resourceName": "nvidia.com/gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values[
        "tolerations"
    ]
    assert "nodeAffinity" in values["affinity"]
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert "set $limits .Values.gpu.resourceName (int .Values.gpu.count)" in helpers
    for key in ("nodeSelector", "tolerations", "affinity", "runtimeClassName"):
        assert f".Values.{key}" in deployment


def test_probes(values: Values, deployment: str) -> None:
    assert values["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert values["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert values["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert values[probe]["httpGet"]["port"] == "http"
        assert f"{probe}:" in deployment
    startup = values["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_termination_grace_covers_prestop_and_longest_request(
    values: Values, deployment: str
) -> None:
    shutdown, config = values["shutdown"], values["config"]
    assert shutdown["preStopSleepSeconds"] > 0
    assert "preStop:" in deployment
    assert "terminationGracePeriodSeconds" in deployment
    # The helper's default: preStop + max(shutdown grace, request timeout) + 15.
    grace = shutdown["terminationGracePeriodSeconds"]
    if grace is None:
        grace = (
            shutdown["preStopSleepSeconds"]
            + max(config["shutdownGraceS"], config["requestTimeoutS"])
            + 15
        )
    assert grace > shutdown["preStopSleepSeconds"] + config["requestTimeoutS"]
    assert config["shutdownGraceS"] >= config["requestTimeoutS"]
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert 'fail (printf "shutdown.terminationGracePeriodSeconds' in helpers


def test_hardened_pod(values: Values, deployment: str) -> None:
    pod, ctr = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["readOnlyRootFilesystem"] is True
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["capabilities"]["drop"] == ["ALL"]
    assert ctr["runAsUser"] == 10001
    assert "mountPath: /tmp" in deployment
    assert "emptyDir" in deployment
    assert values["serviceAccount"]["automount"] is False


def test_config_secret_and_job_store(deployment: str) -> None:
    assert "configMapRef:" in deployment
    assert 'checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml")' in deployment
    assert 'checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml")' in deployment
    assert 'secretName: {{ include "attnserve.secretName" . }}' in deployment
    assert "mountPath: /etc/attnserve/auth" in deployment
    assert "mountPath: /var/lib/attnserve/jobs" in deployment
    assert 'claimName: {{ include "attnserve.jobsClaimName" . }}' in deployment
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert (
        "else if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}\n"
        '{{- print "ReadWriteMany" }}'
    ) in helpers
    pvc = (TEMPLATES / "pvc.yaml").read_text()
    assert "not .Values.persistence.existingClaim" in pvc
    configmap = (TEMPLATES / "configmap.yaml").read_text()
    assert 'ATTNSERVE_API_KEYS_FILE: "/etc/attnserve/auth/{{ .Values.auth.secretKey }}"' in (
        configmap
    )


def test_hpa_pods_metric() -> None:
    hpa = (TEMPLATES / "hpa.yaml").read_text()
    assert "apiVersion: autoscaling/v2" in hpa
    assert "type: Pods" in hpa
    assert "type: Resource" in hpa
    # The shared queue's global depth: an External metric over the replica count.
    shared = hpa[hpa.index("if $shared.enabled }}") :]
    assert shared.index("- type: External") < shared.index("type: AverageValue")
    assert "type: Pods" not in shared


def test_networkpolicy_allows_only_dns_egress() -> None:
    text = (TEMPLATES / "networkpolicy.yaml").read_text()
    assert "port: 53" in text
    assert text.count("protocol: UDP") == 1


CONTRACT_ENV = {
    "ATTNSERVE_HOST",
    "ATTNSERVE_PORT",
    "ATTNSERVE_LOG_LEVEL",
    "ATTNSERVE_MODEL_DIR",
    "ATTNSERVE_JOB_DIR",
    "ATTNSERVE_JOB_TTL_S",
    "ATTNSERVE_JOB_MIN_FREE_MB",
    "ATTNSERVE_JOB_MAX_MB",
    "ATTNSERVE_JOB_STORE",
    "ATTNSERVE_PRESIGN",
    "ATTNSERVE_PROVIDERS",
    "ATTNSERVE_REQUIRE_CUDA",
    "ATTNSERVE_CUDA__DEVICE_ID",
    "ATTNSERVE_CUDA__GPU_MEM_LIMIT_MB",
    "ATTNSERVE_CUDA__CUDNN_CONV_ALGO_SEARCH",
    "ATTNSERVE_BATCHING__MAX_BATCH_SIZE",
    "ATTNSERVE_BATCHING__MAX_QUEUE_DELAY_MS",
    "ATTNSERVE_BATCHING__MAX_QUEUE_SIZE",
    "ATTNSERVE_REQUEST_TIMEOUT_S",
    "ATTNSERVE_MAX_UPLOAD_MB",
    "ATTNSERVE_API_KEYS_FILE",
    "ATTNSERVE_DOCS_ENABLED",
    "ATTNSERVE_SHUTDOWN_GRACE_S",
    "ATTNSERVE_SCENE_COG_LEVEL",
    "ATTNSERVE_SCENE_COG_STREAM",
    "ATTNSERVE_QUEUE_URL",
    "ATTNSERVE_QUEUE_CLAIM_AFTER_S",
}


def _configmap_env() -> set[str]:
    return set(
        re.findall(r"^\s*(ATTNSERVE_\w+):", (TEMPLATES / "configmap.yaml").read_text(), re.M)
    )


def test_configmap_sets_the_contract_settings() -> None:
    assert _configmap_env() == CONTRACT_ENV


# Contract settings the server does not have yet; reported as xfail, not hidden.
PENDING_IN_SERVER = {
    "ATTNSERVE_API_KEYS_FILE",
    # The shared work queue's settings, by the names agreed with it.
    "ATTNSERVE_QUEUE_URL",
    "ATTNSERVE_QUEUE_CLAIM_AFTER_S",
}


def test_configmap_env_names_are_server_settings() -> None:
    config = pytest.importorskip("service.config")
    fields = config.Settings.model_fields
    missing = set()
    for name in sorted(_configmap_env()):
        parts = name.removeprefix("ATTNSERVE_").lower().split("__")
        nested = fields[parts[0]].annotation if parts[0] in fields else None
        if nested is None or (len(parts) == 2 and parts[1] not in nested.model_fields):
            missing.add(name)
    assert missing <= PENDING_IN_SERVER, f"not server settings: {sorted(missing)}"
    if missing:
        pytest.xfail(f"server settings not implemented yet: {sorted(missing)}")
