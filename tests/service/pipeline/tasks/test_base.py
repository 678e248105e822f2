"""Layer entries of model outputs, shared by every task."""

from __future__ import annotations

import numpy as np

from service.pipeline.inputs import RasterInput
from service.pipeline.tasks.base import output_layer, wrong_input
from service.runtime.manifest import OutputSpec


def test_an_output_layer_carries_its_spec_shape_and_statistics() -> None:
    spec = OutputSpec(
        name="gate", role="attention", kind="spatial", shape=["batch", 1, "h", "w"], level=2
    )
    array = np.array([[0.0, 1.0], [np.nan, 0.5]], np.float32)
    entry = output_layer(spec, array, dates=["2024-01-01"])
    assert entry.name == "gate"
    assert entry.role == "attention"
    assert entry.shape == [2, 2]
    assert entry.dtype == "float32"
    assert entry.level == 2
    assert entry.dates == ["2024-01-01"]
    assert entry.statistics == {"min": 0.0, "max": 1.0, "mean": 0.5, "valid_fraction": 0.75}
    assert entry.description is None
    assert "description" not in entry.public()


def test_a_coarse_map_keeps_the_shape_and_statistics_it_is_given() -> None:
    spec = OutputSpec(name="gate", role="attention", kind="spatial", shape=["b", 1, "h", "w"])
    stats: dict[str, float | None] = {"min": 0.2, "max": 0.2, "mean": 0.2, "valid_fraction": 1.0}
    entry = output_layer(spec, np.zeros((2, 2), np.float32), (8, 8), stats, stride=4)
    assert entry.shape == [8, 8]
    assert entry.statistics == stats
    assert entry.stride == 4


def test_the_wrong_input_kind_names_the_task_and_the_input() -> None:
    error = wrong_input("temporal classification", RasterInput(np.zeros((1, 1, 1)), None, None))
    assert "temporal classification" in str(error)
    assert "RasterInput" in str(error)
