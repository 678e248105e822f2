"""The ``attnserve`` command as a whole: its commands, and ``python -m service.cli``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import build_parser, main

COMMANDS = ["serve", "train", "export", "fp16", "quantize", "manifest", "predict",
            "predict-series", "models"]  # fmt: skip


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])
    assert exited.value.code == 2


def test_an_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serv"])
    assert exited.value.code == 2
    assert "invalid choice: 'serv'" in capsys.readouterr().err


def test_python_dash_m_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("positional arguments:")[1]
    for command in COMMANDS:
        assert f"\n    {command}" in listed, command
