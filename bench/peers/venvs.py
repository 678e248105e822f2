"""Each peer's own virtual environment under ``.bench-venvs/``, never the project's.

Made on first use with this interpreter's ``venv`` and pip, from the pinned
requirements below (PyPI); a marker file holds the pins it was made from, so a
change of pins makes it again. ``python -m bench.peers.venvs`` makes them all.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".bench-venvs"
# What every peer needs besides its framework, at the project's own versions.
BASE = ("onnxruntime==1.32.0", "numpy==2.4.6", "rasterio==1.4.4", "python-multipart==0.0.34")
PINS: dict[str, tuple[str, ...]] = {
    "fastapi": ("fastapi==0.165.0", "uvicorn==0.55.0", *BASE),
    "ray": ("ray[serve]==2.60.0", *BASE),
    "bentoml": ("bentoml==1.4.40", *BASE),
}
MARKER = ".peer-pins"


@dataclass(frozen=True)
class Venv:
    """A peer's environment, or why there is none."""

    name: str
    python: Path | None
    pins: tuple[str, ...]
    error: str | None = None


def ensure(name: str, log: Path | None = None) -> Venv:
    """The environment of peer ``name``, made (or remade) when its pins changed."""
    pins = PINS[name]
    where = ROOT / name
    python = where / "bin" / "python"
    marker = where / MARKER
    if python.exists() and marker.exists() and marker.read_text().split() == list(pins):
        return Venv(name, python, pins)
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(where)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *pins], check=True, stdout=out, stderr=out)
    except (OSError, subprocess.CalledProcessError) as exc:
        tail = log.read_text()[-600:] if log and log.exists() else ""
        return Venv(name, None, pins, f"pip install {' '.join(pins)} failed: {exc} {tail}")
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    marker.write_text("\n".join(pins) + "\n")
    return Venv(name, python, pins)


def main() -> int:
    """Make every peer's environment and say where it is."""
    for name in PINS:
        venv = ensure(name)
        print(f"{name}: {venv.python or venv.error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
