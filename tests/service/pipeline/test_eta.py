"""Time left of a running job from its pace."""

from __future__ import annotations

import time

import pytest

from service.pipeline.eta import elapsed_eta


def test_no_estimate_before_the_first_tile() -> None:
    assert elapsed_eta(time.time() - 5, 0, 10) is None


def test_the_rest_takes_as_long_per_tile_as_the_done_part() -> None:
    assert elapsed_eta(time.time() - 10, 2, 6) == pytest.approx(20.0, abs=0.2)
    assert elapsed_eta(time.time() - 10, 6, 6) == 0.0
