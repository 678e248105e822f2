"""Output specs: each problem names the field at fault."""

from __future__ import annotations

import pytest

from service.runtime.manifest_outputs import OutputSpec, output_problems


def gate(**change: object) -> OutputSpec:
    """A stride-2 spatial attention map, changed as asked."""
    spec = {
        "name": "gate",
        "role": "attention",
        "kind": "spatial",
        "shape": ["batch", 1, "h", "w"],
        "stride": 2,
    }
    return OutputSpec(**{**spec, **change})  # type: ignore[arg-type]


def test_a_coarse_map_whose_stride_divides_the_size_multiple_is_fine() -> None:
    assert output_problems(gate(), 4) == []


@pytest.mark.parametrize(
    ("change", "multiple", "words"),
    [
        ({"kind": "heatmap"}, 4, "kind: output 'gate' has unknown kind 'heatmap'"),
        ({"role": "evidence"}, 4, "role: output 'gate' has unknown role 'evidence'"),
        ({"stride": 0}, 4, "stride: output 'gate' stride must be a positive integer"),
        ({"stride": 8}, 4, "stride 8 must divide the input's size_multiple (4)"),
        ({"shape": ["batch", 3]}, 4, "only 4-D attention maps may have a stride"),
        ({"grid": [4, 4]}, 4, "grid: output 'gate': a token_grid output, and only one"),
    ],
)
def test_a_wrong_output_is_named_with_its_field(
    change: dict[str, object], multiple: int, words: str
) -> None:
    found = output_problems(gate(**change), multiple)
    assert any(words in p for p in found), found
