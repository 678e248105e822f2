"""A short run of the soak (``bench/soak/soak.py``) as a test; the long run is committed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_soak_gets_only_expected_statuses_and_memory_stays_flat(
    tmp_path: Path, model_dir: Path
) -> None:
    out = tmp_path / "soak"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "soak" / "soak.py"),
            "--duration",
            "45",
            "--sample",
            "2",
            "--model-dir",
            str(model_dir),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.with_suffix(".json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["requests"] > 100
    assert result["unexpected"] == 0, result["unexpected_examples"]
    # Every kind of request was exercised, valid and hostile alike.
    assert all(sum(v.values()) > 0 for v in result["statuses"].values())
    rss = result["rss_mb"]
    assert rss["end"] - rss["after_warmup"] < 150, rss
