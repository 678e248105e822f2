"""bench.scene_s3: a scene job on local disk and on a real S3 server, and its page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scene_s3 import main
from tests.helpers.objectstore import weed_binary


@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS's weed binary is not installed")
def test_a_small_scene_runs_on_both_stores_with_valid_outputs(tmp_path: Path) -> None:
    out = tmp_path / "scene_s3"
    assert main(["--repeat", "1", "--out", str(out)]) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    local, remote = results["runs"].values()
    for run in (local, remote):
        assert run["tiles"] > 0
        assert run["cogs"]
        assert all(c["cog_valid"] and c["same"] for c in run["cogs"])
    assert [c["file"] for c in local["cogs"]] == [c["file"] for c in remote["cogs"]]
    page = out.with_suffix(".md").read_text()
    assert "| object store, by reference |" in page
    assert "Object store against local disk: time" in page
