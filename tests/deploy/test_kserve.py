"""The KServe manifests: both validate against KServe's own CRD schemas, the
InferenceService lands on this runtime, and a server started with the runtime's
container arguments answers the v2 protocol under the InferenceService's name."""

from __future__ import annotations

import copy
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from tests.deploy._deploy import CHART, ROOT, VENV_BIN

KSERVE = ROOT / "deploy" / "kserve"
RUNTIME = KSERVE / "servingruntime.yaml"
ISVC = KSERVE / "inferenceservice.yaml"
# KServe's published CRDs, vendored read-only beside the checkout (see its README).
CRDS = ROOT.parent / "shared" / "schemas" / "kserve"
CRD_FILES = {
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
MODEL = ROOT / "models" / "shipped" / "footprints-2.2.0.onnx"

Manifest = dict[str, Any]


def _load(path: Path) -> Manifest:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes
    document: Manifest = yaml.load(path.read_text(), Loader=loader)
    return document


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as ``kubectl apply --validate=strict`` does.

    A CRD's schema leaves ``additionalProperties`` open: the API server prunes
    unknown fields silently, so a misspelt key would be lost, not reported.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd(kind: str) -> Manifest:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KServe CRDs not found in {CRDS}")
    return _load(path)


def _validator(manifest: Manifest) -> jsonschema.Draft7Validator:
    """The strict validator of the CRD version the manifest's apiVersion names."""
    crd = _crd(manifest["kind"])
    group, _, version = manifest["apiVersion"].partition("/")
    assert group == crd["spec"]["group"]
    assert crd["spec"]["names"]["kind"] == manifest["kind"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    assert version in served, f"{manifest['kind']} {version} is not served by the CRD"
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(manifest: Manifest) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(manifest).iter_errors(manifest)
    ]


@pytest.fixture(scope="module")
def runtime() -> Manifest:
    return _load(RUNTIME)


@pytest.fixture(scope="module")
def isvc() -> Manifest:
    return _load(ISVC)


# ------------------------------------------------------------------ CRD schemas
@pytest.mark.parametrize("path", [RUNTIME, ISVC], ids=lambda p: p.name)
def test_the_manifest_validates_against_the_kserve_crd(path: Path) -> None:
    assert _errors(_load(path)) == []


def test_the_strict_schema_refuses_what_a_cluster_would_drop_or_refuse(
    runtime: Manifest, isvc: Manifest
) -> None:
    misspelt = copy.deepcopy(runtime)
    misspelt["spec"]["supportedModelFormat"] = misspelt["spec"].pop("supportedModelFormats")
    assert any("'supportedModelFormat' was unexpected" in e for e in _errors(misspelt))
    zero = copy.deepcopy(runtime)
    zero["spec"]["supportedModelFormats"][0]["priority"] = 0
    assert any("supportedModelFormats.0.priority" in e for e in _errors(zero))
    no_containers = copy.deepcopy(runtime)
    del no_containers["spec"]["containers"]
    assert any("'containers' is a required property" in e for e in _errors(no_containers))
    wrong_place = copy.deepcopy(isvc)
    wrong_place["spec"]["predictor"]["storageUri"] = wrong_place["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    wrong_place["spec"]["predictor"]["model"]["storageURI"] = "s3://x/"
    assert any("'storageURI' was unexpected" in e for e in _errors(wrong_place))


# ------------------------------------------------------------------ what KServe needs
def test_the_runtime_speaks_v2_on_8080_from_mnt_models(runtime: Manifest) -> None:
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == {"attnserve", "onnx"}
    assert formats["attnserve"]["autoSelect"] is True
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    args = container["args"]
    assert args[0] == "serve"
    assert {"--host=0.0.0.0", "--port=8080", "--model-dir=/mnt/models"} <= set(args)
    assert "--model-name={{.Name}}" in args
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == 8080
        assert container[probe]["httpGet"]["path"].startswith("/v2/health/")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"ghcr.io/attnserve/attnserve:{chart['appVersion']}-gpu"


def test_the_inference_service_runs_on_this_runtime(runtime: Manifest, isvc: Manifest) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].startswith("s3://")
    # KServe names the model after the InferenceService: a name the server accepts.
    assert isvc["metadata"]["name"].replace("-", "").isalnum()


# ------------------------------------------------------------------ live
def _runtime_command(runtime: Manifest, name: str, model_dir: Path, port: int) -> list[str]:
    """The container's command line as KServe runs it, on 127.0.0.1 of this machine."""
    (container,) = runtime["spec"]["containers"]
    mapped = {
        "--host=0.0.0.0": "--host=127.0.0.1",
        "--port=8080": f"--port={port}",
        "--model-dir=/mnt/models": f"--model-dir={model_dir}",
    }
    # KServe fills the runtime's {{.Name}} with the InferenceService's metadata.
    args = [mapped.get(a, a).replace("{{.Name}}", name) for a in container["args"]]
    script = VENV_BIN / "attnserve"
    if not script.exists():
        pytest.skip("the attnserve console script is not installed")
    return [str(script), *args]


@pytest.fixture
def predictor(runtime: Manifest, isvc: Manifest, tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("onnxruntime")
    from tests.helpers.server import LiveServer

    # What the storage initializer leaves in /mnt/models for the example's storageUri.
    mnt = tmp_path / "mnt" / "models"
    mnt.mkdir(parents=True)
    shutil.copy(MODEL, mnt / MODEL.name)
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    env["ATTNSERVE_JOB_DIR"] = str(tmp_path / "jobs")
    name = isvc["metadata"]["name"]

    def command(port: int) -> list[str]:
        return _runtime_command(runtime, name, mnt, port)

    live = LiveServer(env, tmp_path / "server.log", command=command)
    try:
        live.wait_ready(120)
        yield live.url
    finally:
        live.stop()


def test_the_runtime_serves_the_model_as_the_inference_service(
    predictor: str, isvc: Manifest
) -> None:
    import httpx

    from tests.helpers.v2 import infer_image

    name = isvc["metadata"]["name"]
    assert httpx.get(f"{predictor}/v2/health/ready", timeout=5).status_code == 200
    assert httpx.get(f"{predictor}/v2/models/{name}/ready", timeout=5).status_code == 200
    # The manifest's own name is not what KServe routes to.
    assert httpx.get(f"{predictor}/v2/models/footprints/ready", timeout=5).status_code == 404
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64)).astype(np.float32)
    meta, got = infer_image(predictor, name, image, ["probability", "gate_1"])
    assert meta["name"] == name
    assert {"probability", "gate_1", "band_weights"} <= {o["name"] for o in meta["outputs"]}
    assert got["probability"].shape == (1, 1, 64, 64)
    assert ((got["probability"] >= 0) & (got["probability"] <= 1)).all()
