"""bench.scene_queue: one scene over one and two replicas sharing Redis, and its page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.scene_queue import main
from tests.helpers.redis_server import redis_binary


@pytest.mark.slow
@pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")
def test_a_small_scene_is_split_over_two_replicas_and_modelled(tmp_path: Path) -> None:
    out = tmp_path / "scene_queue"
    assert (
        main(["--size", "1024", "--replicas", "1", "2", "--unit-tiles", "2", "--out", str(out)])
        == 0
    )
    results = json.loads(out.with_suffix(".json").read_text())
    one, two = results["runs"]
    assert one["units"] == two["units"] > 1
    assert one["finish_runs"] == two["finish_runs"] == 1
    assert one["workers"] == [one["units"]]
    assert sum(two["workers"]) == two["units"]
    assert 0 < one["serial_share"] < 1
    assert two["max_difference"] <= 1e-5  # split over two replicas, same outputs
    page = out.with_suffix(".md").read_text()
    assert "Amdahl from 1 replica" in page
    assert f"after: {results['load_after']}" in page
