"""``attnserve serve``: the model repository over HTTP on the address given."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from service.config import SHIPPED_MODELS
from tests.helpers.server import LiveServer


def _attnserve_serve(port: int) -> list[str]:
    return [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip


def test_serve_binds_the_port_given_and_serves_the_repository(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "crops-1.0.0.onnx").symlink_to(SHIPPED_MODELS / "crops-1.0.0.onnx")
    env = {"ATTNSERVE_MODEL_DIR": str(model_dir), "ATTNSERVE_JOB_DIR": str(tmp_path / "jobs")}
    with LiveServer(env, tmp_path / "server.log", command=_attnserve_serve) as live:
        models = httpx.get(f"{live.url}/models", timeout=10).json()
        assert [m["name"] for m in models["models"]] == ["crops"]


def test_a_model_name_kserve_could_not_route_is_refused_before_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    assert main(["serve", "--model_name", "a/b", "--port", "1"]) == 2
    assert "model_name 'a/b' must be alphanumeric" in capsys.readouterr().err
