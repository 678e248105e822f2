"""``attnserve export`` and ``fp16``: what they refuse, in one line (writing: tests/models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main


def test_export_without_checkpoint_or_module_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == "attnserve: export: give a checkpoint, or --module pkg.mod:factory\n"
    assert not (tmp_path / "m.onnx").exists()


def test_fp16_of_a_file_that_is_no_model_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \xff\xfe")
    assert main(["fp16", str(junk), "--out", str(tmp_path / "half.onnx")]) == 1
    assert "attnserve fp16:" in capsys.readouterr().err
    assert not (tmp_path / "half.onnx").exists()
