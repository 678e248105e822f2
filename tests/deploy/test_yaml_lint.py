"""yamllint on the deploy YAML (Helm templates are Go templates: not linted)."""

from __future__ import annotations

import subprocess

import pytest

from tests.deploy._deploy import CHART, DOCKER, ROOT, VENV_BIN, YAMLLINT_CONFIG

YAML_FILES = [
    CHART / "values.yaml",
    CHART / "Chart.yaml",
    DOCKER / "compose.yaml",
    DOCKER / "prometheus" / "prometheus.yml",
    DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml",
    DOCKER / "grafana" / "provisioning" / "dashboards" / "attnserve.yaml",
    YAMLLINT_CONFIG,
    *sorted((ROOT / "deploy").rglob("*.yaml")),
]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yamllint(path) -> None:
    yamllint = VENV_BIN / "yamllint"
    if not yamllint.exists():
        pytest.skip("yamllint (dev extra) is not installed")
    proc = subprocess.run(
        [str(yamllint), "--strict", "--format", "parsable", "-c", str(YAMLLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
