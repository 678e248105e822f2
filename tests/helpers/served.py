"""Shipped models loaded through a real repository, for tests that run them in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from service.config import SHIPPED_MODELS
from service.runtime.repository import BatchLimits, ModelRepository, ServedModel
from service.runtime.session import SessionOptions


@contextlib.asynccontextmanager
async def served_model(name: str, tmp: Path) -> AsyncIterator[ServedModel]:
    """The shipped model ``name`` (e.g. ``footprints-*``) served on CPU, batcher running."""
    model = next(SHIPPED_MODELS.glob(f"{name}.onnx"))
    (tmp / model.name).symlink_to(model)
    options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    repo = ModelRepository(tmp, options, lambda _m: BatchLimits(4, 1.0, 64), warmup=False)
    await repo.load()
    try:
        yield repo.all()[0]
    finally:
        await repo.stop(5)


@contextlib.asynccontextmanager
async def served_from(directory: Path, name: str) -> AsyncIterator[ServedModel]:
    """The model ``name`` of ``directory`` (sidecar manifests and all) served on CPU."""
    options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
    repo = ModelRepository(directory, options, lambda _m: BatchLimits(2, 1.0, 8), warmup=False)
    await repo.load()
    assert repo.failures == {}, repo.failures
    try:
        yield repo.get(name)
    finally:
        await repo.stop(5)
