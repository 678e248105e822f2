"""What the benchmark ran on: CPU, memory, load, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def git_sha() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    """The machine and software versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _mem_total_gib(),
        "gpu": "none (no GPU available to this run; CPUExecutionProvider only)"
        if "CUDAExecutionProvider" not in ort.get_available_providers()
        else "CUDA provider available",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "numpy": np.__version__,
        "attnserve_git": git_sha(),
        "platform": platform.platform(),
    }


def report_head(title: str, machine: dict[str, Any], *intro: str) -> list[str]:
    """The opening lines of a results page: its title, what made it, and the machine."""
    ram = machine.get("ram_gib", machine.get("memory_gib"))
    return [
        f"# {title}",
        "",
        *intro,
        *([""] if intro else []),
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {ram} GiB RAM; Python "
        f"{machine.get('python')}, ONNX Runtime {machine.get('onnxruntime')}.",
        "",
    ]
