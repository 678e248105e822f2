"""The runtime's task registry: padding, warm-up sizes and memory estimates per task."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.memory import SceneLoad
from service.runtime.chips import ChipClassifier
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.segmentation import SegmentationTask, context_px
from service.runtime.tasks import INFERENCE_TASKS, inference_task
from service.runtime.temporal import TemporalTask


def test_every_known_task_has_one_class(footprints: Manifest, crops: Manifest) -> None:
    assert set(INFERENCE_TASKS) == {
        "segmentation",
        "temporal_classification",
        "image_classification",
    }
    assert INFERENCE_TASKS["image_classification"] is ChipClassifier
    assert not ChipClassifier.dated
    assert inference_task(footprints) is SegmentationTask
    assert inference_task(crops) is TemporalTask
    assert not SegmentationTask.dated
    assert TemporalTask.dated


def test_only_series_are_padded_to_share_a_batch(footprints: Manifest, crops: Manifest) -> None:
    assert SegmentationTask.padding(footprints).inputs == {}
    padding = TemporalTask.padding(crops)
    assert set(padding.inputs) == {t.name for t in crops.tensors}
    assert set(padding.outputs) == {o.name for o in crops.attention}


def test_cuda_warms_up_the_scene_tile_with_its_halo(footprints: Manifest) -> None:
    tile = footprints.input.tile_size
    assert tile is not None
    halo = context_px(footprints)
    assert halo > 0
    assert SegmentationTask.warmup_sizes(footprints, cuda_active=False) == (tile,)
    assert SegmentationTask.warmup_sizes(footprints, cuda_active=True) == (tile, tile + 2 * halo)


def test_series_warm_up_once(crops: Manifest) -> None:
    assert TemporalTask.warmup_sizes(crops, cuda_active=True) == (crops.input.tile_size,)


def test_coarse_maps_cost_less_per_pixel_than_full_ones(footprints: Manifest) -> None:
    full = SegmentationTask.outputs_per_unit(footprints)
    strided = [replace(o, stride=1) if len(o.shape) == 4 else o for o in footprints.outputs]
    assert any(o.stride > 1 for o in footprints.outputs)
    assert SegmentationTask.outputs_per_unit(replace(footprints, outputs=strided)) > full > 0


@pytest.mark.parametrize("task", [SegmentationTask, TemporalTask])
def test_scene_memory_grows_with_tile_and_tiles_in_flight(
    task: type[SegmentationTask] | type[TemporalTask], footprints: Manifest, crops: Manifest
) -> None:
    manifest = footprints if task is SegmentationTask else crops
    small = task.scene_bytes(manifest, SceneLoad(1000.0, 8, 256, 4, 4))
    assert task.scene_bytes(manifest, SceneLoad(1000.0, 8, 512, 4, 4)) > small > 0
    assert task.scene_bytes(manifest, SceneLoad(1000.0, 8, 256, 4, 16)) > small


def test_scene_tiles_default_to_the_model_tile_for_images_only(
    footprints: Manifest, crops: Manifest
) -> None:
    assert SegmentationTask.scene_tile(footprints) == (footprints.input.tile_size or 512)
    assert TemporalTask.scene_tile(crops) == 256


def test_image_tiles_step_by_the_size_multiple_series_tiles_by_16(
    footprints: Manifest, crops: Manifest
) -> None:
    multiple = footprints.input.size_multiple
    assert multiple is not None
    assert multiple > 1
    assert SegmentationTask.tile_step(footprints) == multiple
    assert SegmentationTask.scene_tile(footprints) % SegmentationTask.tile_step(footprints) == 0
    assert TemporalTask.tile_step(crops) == 16


def test_a_manifest_names_a_task_of_the_registry_and_meets_its_demands(
    footprints: Manifest, crops: Manifest
) -> None:
    for task in INFERENCE_TASKS:
        named = replace(crops, task=task)
        assert not [p for p in named.problems() if p.startswith("task:")]
    unknown = replace(footprints, task="regression").problems()
    assert unknown == [
        "task: unknown task 'regression'; known: segmentation, temporal_classification, "
        "image_classification"
    ]
    assert SegmentationTask.manifest_problems(replace(footprints, classes=[])) == []
    assert TemporalTask.manifest_problems(crops) == []
    assert TemporalTask.manifest_problems(replace(crops, classes=[])) == [
        "classes: a classification model must list its classes"
    ]


@pytest.mark.parametrize("task", ["segmentation", "temporal_classification"])
def test_a_token_grid_is_refused_by_the_tasks_that_serve_no_chips(
    task: str, footprints: Manifest, crops: Manifest
) -> None:
    manifest = footprints if task == "segmentation" else crops
    tokens = OutputSpec("tokens", "attention", "token_grid", ["batch", 16], grid=[4, 4])
    with_grid = replace(manifest, outputs=[*manifest.outputs, tokens])
    problems = INFERENCE_TASKS[task].manifest_problems(with_grid)
    index = len(manifest.outputs)
    assert problems == [
        f"outputs[{index}].kind: 'tokens' is a token_grid, served by image_classification "
        "models only"
    ]
