"""CPU instances: helper sessions of a real model, beside its main session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from service.config import SHIPPED_MODELS
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.segmentation import SegmentationTask
from service.runtime.session import SessionOptions


def _repository(directory: Path, instances: int) -> ModelRepository:
    options = SessionOptions(
        providers=("CPUExecutionProvider",), intra_op_threads=2, cpu_instances=instances
    )
    return ModelRepository(directory, options, lambda _m: BatchLimits(4, 1.0, 64), warmup=False)


def test_helpers_get_a_share_of_the_cores_and_agree_with_the_main_session(
    tmp_path: Path,
) -> None:
    model = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    (tmp_path / model.name).symlink_to(model)

    async def main() -> tuple[int, list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        repo = _repository(tmp_path, instances=2)
        await repo.load()
        served = repo.get("footprints")
        task = served.task
        assert isinstance(task, SegmentationTask)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (3, 64, 64)).astype(np.float32) for _ in range(6)]
        alone = await task.predict(images[0], None, 30)
        together = await asyncio.gather(*(task.predict(x, None, 30) for x in images))
        helpers = served.batcher.helpers
        await repo.stop(5)
        return helpers, [t.layers for t in together], alone.layers

    helpers, together, alone = asyncio.run(main())
    assert helpers == 2
    for name, array in alone.items():
        np.testing.assert_allclose(together[0][name], array, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0]["probability"], together[1]["probability"])


def test_one_instance_means_no_helpers(tmp_path: Path) -> None:
    model = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    (tmp_path / model.name).symlink_to(model)

    async def main() -> int:
        repo = _repository(tmp_path, instances=1)
        await repo.load()
        helpers = repo.get("footprints").batcher.helpers
        await repo.stop(5)
        return helpers

    assert asyncio.run(main()) == 0
