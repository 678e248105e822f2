"""A peer's environment is reused while its pins stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import venvs


def test_ensure_reuses_an_environment_made_from_the_same_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(venvs, "ROOT", tmp_path)
    python = tmp_path / "fastapi" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (tmp_path / "fastapi" / venvs.MARKER).write_text("\n".join(venvs.PINS["fastapi"]) + "\n")
    venv = venvs.ensure("fastapi")
    assert venv.python == python
    assert venv.error is None
    assert venv.pins == venvs.PINS["fastapi"]


def test_every_peer_pins_onnxruntime_and_its_framework() -> None:
    for name, pins in venvs.PINS.items():
        assert all("==" in p for p in pins), name
        assert any(p.startswith("onnxruntime==") for p in pins)
        assert any(p.split("[")[0].split("==")[0] == name for p in pins)
