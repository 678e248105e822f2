"""Pieces every trainer shares: seeding, devices, checkpoints and metric files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; returns a numpy generator for data making."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch (default: all cores)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def save_checkpoint(
    path: Path,
    *,
    family: str,
    config: dict[str, Any],
    model: torch.nn.Module,
    metrics: dict[str, float],
    training: dict[str, Any],
) -> None:
    """Write a self-describing checkpoint (atomically) that ``attnserve export`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "family": family,
            "config": config,
            "state_dict": model.state_dict(),
            "metrics": metrics,
            "training": training,
        },
        tmp,
    )
    tmp.replace(path)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Write held-out metrics as pretty JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
