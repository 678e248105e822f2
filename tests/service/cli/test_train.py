"""``attnserve train FAMILY``: the family's own trainer reads the rest of the line."""

from __future__ import annotations

import pytest

from service.cli import main
from service.cli.train import TRAINERS, wants


def test_only_a_known_family_hands_the_line_to_its_trainer() -> None:
    assert wants(["train", "footprints", "--epochs", "1"])
    assert not wants(["train"])
    assert not wants(["train", "roads"])
    assert not wants(["serve", "footprints"])
    assert set(TRAINERS) == {"footprints", "crops"}


def test_an_unknown_family_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["train", "roads"])
    assert exited.value.code == 2
    assert "invalid choice: 'roads'" in capsys.readouterr().err


def test_a_family_s_help_lists_its_trainer_s_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("torch")
    with pytest.raises(SystemExit) as exited:
        main(["train", "crops", "--help"])
    assert exited.value.code == 0
    assert "usage: attnserve train crops" in capsys.readouterr().out
