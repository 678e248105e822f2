"""bench.raw: helpers the raw reference shares with the served figures."""

from __future__ import annotations

import pytest

from bench.raw import server_input_side
from service.config import SHIPPED_MODELS
from service.runtime.session import ModelSession, SessionOptions


@pytest.mark.parametrize(("side", "want"), [(512, 512), (500, 512), (513, 528)])
def test_server_input_side_runs_the_task_on_the_shipped_manifest(side: int, want: int) -> None:
    # The shipped footprints model has coarse gates (strides 2 to 8): the probe
    # standing in for the batcher must answer shapes the task can crop.
    path = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    manifest = ModelSession(path, SessionOptions()).manifest
    assert server_input_side(manifest, side) == want
