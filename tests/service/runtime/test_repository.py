"""The model repository: CPU instances beside a model's main session; manifests from sidecars."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from service.config import SHIPPED_MODELS
from service.runtime.manifest import sidecar_path
from service.runtime.manifest_draft import draft_manifest
from service.runtime.repository import BatchLimits, ModelRepository
from service.runtime.segmentation import SegmentationTask
from service.runtime.session import SessionOptions
from tests.helpers.onnx_graphs import binary_segmenter, edited_draft, wrong_manifest


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


def test_a_plain_onnx_file_serves_through_its_sidecar_and_bad_ones_are_skipped(
    tmp_path: Path,
) -> None:
    good = edited_draft(draft_manifest(binary_segmenter(tmp_path / "roofs.onnx")).manifest)
    sidecar_path(tmp_path / "roofs.onnx").write_text(json.dumps(good))
    for case in ("wrong-stride", "unknown-kind"):
        binary_segmenter(tmp_path / f"{case}.onnx")
        sidecar_path(tmp_path / f"{case}.onnx").write_text(json.dumps(wrong_manifest(good, case)))
    binary_segmenter(tmp_path / "bare.onnx")

    async def main() -> tuple[list[str], dict[str, str], str, np.ndarray]:
        repo = _repository(tmp_path, instances=1)
        await repo.load()
        served = repo.get("roofs")
        image = np.random.default_rng(0).integers(0, 255, (3, 40, 40)).astype(np.float32)
        assert isinstance(served.task, SegmentationTask)
        out = await served.task.predict(image, None, 30)
        await repo.stop(5)
        return repo.names(), repo.failures, served.session.manifest_source, out.layers["attention"]

    names, failures, source, attention = asyncio.run(main())
    assert names == ["roofs"]
    assert source == "sidecar"
    assert attention.shape == (1, 20, 20)  # at stride 2, as the sidecar says
    assert sorted(failures) == ["bare.onnx", "unknown-kind.onnx", "wrong-stride.onnx"]
    assert failures["wrong-stride.onnx"].startswith(
        "wrong-stride.manifest.json: outputs[1].stride: output 'attention' is 32x32"
    )
    assert "unknown kind 'heatmap'" in failures["unknown-kind.onnx"]
    assert "no bare.manifest.json lies beside it" in failures["bare.onnx"]


def test_an_embedded_manifest_wins_over_a_sidecar_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    (tmp_path / model.name).symlink_to(model)
    sidecar_path(tmp_path / model.name).write_text('{"name": "ignored"}')

    async def main() -> tuple[list[str], str]:
        repo = _repository(tmp_path, instances=1)
        await repo.load()
        await repo.stop(5)
        return repo.names(), repo.get("footprints").session.manifest_source

    with caplog.at_level(logging.WARNING, logger="service.runtime.repository"):
        names, source = asyncio.run(main())
    assert (names, source) == (["footprints"], "embedded")
    assert f"{model.name} carries its own manifest, which wins over" in caplog.text


def _two_models(directory: Path) -> Path:
    for pattern in ("footprints-*.onnx", "crops-1.*.onnx"):
        model = next(SHIPPED_MODELS.glob(pattern))
        (directory / model.name).symlink_to(model)
    return directory


def _load(directory: Path, serve_as: str) -> tuple[list[str], dict[str, str], str]:
    async def main() -> tuple[list[str], dict[str, str], str]:
        options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=1)
        repo = ModelRepository(
            directory, options, lambda _m: BatchLimits(4, 1.0, 64), warmup=False, serve_as=serve_as
        )
        await repo.load()
        refs = [m.batcher.name for m in repo.all()]
        await repo.stop(5)
        return repo.names(), repo.failures, ",".join(refs)

    return asyncio.run(main())


def test_one_model_is_served_under_the_name_asked_for(tmp_path: Path) -> None:
    model = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    (tmp_path / model.name).symlink_to(model)
    names, failures, batchers = _load(tmp_path, "buildings")
    assert (names, failures) == (["buildings"], {})
    assert batchers.startswith("buildings:")


def test_of_several_models_the_name_must_be_one_of_them(tmp_path: Path) -> None:
    names, failures, _ = _load(_two_models(tmp_path), "crops")
    assert (names, failures) == (["crops", "footprints"], {})
    names, failures, _ = _load(tmp_path, "buildings")
    assert names == []
    assert len(failures) == 2
    for reason in failures.values():
        assert "'buildings' (ATTNSERVE_MODEL_NAME) names one model" in reason
        assert "crops, footprints" in reason
