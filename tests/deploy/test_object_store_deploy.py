"""The object-store deploys, checked without docker or helm: the compose profile's
services agree with each other, and the chart drops the job volume for an object store."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy._deploy import DOCKER, TEMPLATES


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    return services


def test_the_s3_profile_server_uses_the_profiles_object_store() -> None:
    services = _services()
    store, bucket, server = (
        services["objectstore"],
        services["objectstore-bucket"],
        services["attnserve-s3"],
    )
    assert store["profiles"] == bucket["profiles"] == server["profiles"] == ["s3"]
    assert not store["image"].endswith(":latest")
    env = server["environment"]
    port = next(a.split("=")[1] for a in store["command"] if a.startswith("-s3.port="))
    assert env["AWS_ENDPOINT_URL"] == f"http://objectstore:{port}"
    created = re.search(r"s3\.bucket\.create -name ([a-z0-9.-]+)", bucket["command"][0])
    assert created is not None
    assert env["ATTNSERVE_JOB_STORE"].startswith(f"s3://{created.group(1)}/")
    config = next(v for v in store["volumes"] if v.endswith(":/etc/seaweedfs/s3.json:ro"))
    identities = json.loads((DOCKER / config.split(":")[0]).read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) in keys
    # No shared job volume: the bucket is what replicas share.
    assert not any(v.startswith("jobs:") for v in server.get("volumes", []))
    assert server["depends_on"]["objectstore-bucket"] == {
        "condition": "service_completed_successfully"
    }


def test_the_chart_makes_no_claim_for_an_object_store() -> None:
    pvc = (TEMPLATES / "pvc.yaml").read_text().splitlines()[0]
    assert "(not .Values.objectStore.enabled)" in pvc
    deployment = (TEMPLATES / "deployment.yaml").read_text()
    jobs = deployment[deployment.index("- name: jobs\n          {{-") :]
    assert jobs.index("objectStore.enabled") < jobs.index("emptyDir") < jobs.index("persistence")
