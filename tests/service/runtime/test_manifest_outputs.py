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


def weights(**change: object) -> OutputSpec:
    """Squeeze-and-excitation weights of 4 features ``(B, 4, 1, 1)``, changed as asked."""
    spec = {"name": "se", "role": "attention", "kind": "channel", "shape": ["batch", 4, 1, 1]}
    return OutputSpec(**{**spec, **change})  # type: ignore[arg-type]


def test_channel_weights_come_as_b_c_or_b_c_1_1_with_optional_names() -> None:
    assert output_problems(weights(), None) == []
    assert output_problems(weights(shape=["batch", 4], channels=["a", "b", "c", "d"]), 1) == []
    assert weights().channel_names(["red", "green", "blue"]) == [f"channel_{i}" for i in range(4)]
    assert weights(channels=list("abcd")).channel_names(["red"]) == list("abcd")
    # As many weights as bands, unnamed: the bands' weights.
    assert weights(shape=["batch", 3]).channel_names(["red", "green", "blue"]) == [
        "red",
        "green",
        "blue",
    ]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"shape": ["batch", 4, 8, 8]}, "is channel attention, one weight per channel"),
        ({"stride": 2}, "stride: output 'se' is channel attention, which has no stride"),
        ({"channels": ["a", "b"]}, "channels: output 'se' has 4 channels but 2 names"),
        ({"channels": "abcd"}, "names its channels as a list of strings"),
    ],
)
def test_a_wrong_channel_output_is_named(change: dict[str, object], words: str) -> None:
    (found,) = output_problems(weights(**change), 4)
    assert words in found


def test_only_a_channel_output_names_channels() -> None:
    assert output_problems(gate(channels=["a"]), 4) == [
        "channels: output 'gate': only a channel output names channels"
    ]


def test_heads_are_read_from_the_shape() -> None:
    assert gate().heads == 1
    assert gate(shape=["batch", 4, "h", "w"]).heads == 4
    assert gate(kind="token_grid", shape=["batch", 6, 196], grid=[14, 14]).heads == 6
    assert gate(kind="token_grid", shape=["batch", 196], grid=[14, 14]).heads == 1
    assert weights().heads == 1
