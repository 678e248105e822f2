"""Chip classifiers: one image (a chip) in, class probabilities for the whole of it out.

A model of task ``image_classification`` answers ``(B, K)`` class probabilities
(scene classes, cloud / no cloud). Its attention comes as spatial maps
``(B, 1, h, w)`` at any stride, upsampled to the chip, or as a token grid
``(B, N)`` or ``(B, heads, N)`` over the ``h x w`` patches the manifest states
(a ViT's attention of its class token), each token's weight covering its patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from service.errors import InvalidInput
from service.memory import SceneLoad
from service.runtime.batcher import DynamicBatcher
from service.runtime.feeds import SameShapeBatches
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.segmentation import pad_to_multiple, upsample

ATTENTION_KINDS = ("spatial", "token_grid", "channel")


def map_outputs(manifest: Manifest) -> list[OutputSpec]:
    """The attention outputs that are maps of the chip: all but channel weights."""
    return [spec for spec in manifest.attention if spec.kind != "channel"]


def chip_shape(manifest: Manifest) -> tuple[int, int] | None:
    """The chip's ``(H, W)`` where the image input's shape fixes them (a ViT's does)."""
    shape = manifest.tensors[0].shape if manifest.tensors else []
    if len(shape) != 4:
        return None
    _, _, height, width = shape
    if isinstance(height, int) and isinstance(width, int):
        return height, width
    return None


def token_map(tokens: np.ndarray, grid: list[int], height: int, width: int) -> np.ndarray:
    """``(height, width)`` float32 map of ``(N,)`` or ``(heads, N)`` weights over a patch grid.

    Heads are averaged; each token's weight covers its patch of
    ``height / h x width / w`` pixels, row by row as a ViT flattens its patches.
    """
    values = np.asarray(tokens, dtype=np.float32)
    if values.ndim == 2:
        values = values.mean(axis=0)
    h, w = grid
    cells = values.reshape(h, w)
    out: np.ndarray = np.repeat(np.repeat(cells, height // h, axis=0), width // w, axis=1)
    return out


def _grid_problems(i: int, out: OutputSpec, chip: tuple[int, int] | None) -> list[str]:
    """What is wrong with a token_grid output's grid against the chip it covers."""
    where = f"outputs[{i}]"
    grid = out.grid
    if not (
        isinstance(grid, list)
        and len(grid) == 2
        and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
    ):
        return [f"{where}.grid: {out.name!r} needs its patch grid as [h, w], not {grid!r}"]
    if len(out.shape) not in (2, 3):
        return [f"{where}.shape: a token_grid output is (B, N) or (B, heads, N), not {out.shape}"]
    found: list[str] = []
    tokens = out.shape[-1]
    if isinstance(tokens, int) and tokens != grid[0] * grid[1]:
        found.append(
            f"{where}.grid: {out.name!r} has {tokens} tokens but a {grid[0]} x {grid[1]} grid "
            f"has {grid[0] * grid[1]}"
        )
    if chip is None:
        found.append(
            f"tensors[0].shape: {out.name!r} covers a fixed patch grid, so the image input "
            "needs a fixed height and width"
        )
    elif chip[0] % grid[0] or chip[1] % grid[1]:
        found.append(
            f"{where}.grid: a {grid[0]} x {grid[1]} grid does not divide the "
            f"{chip[0]} x {chip[1]} chip into whole patches"
        )
    return found


def cell_size(spec: OutputSpec, chip: int) -> int:
    """Chip pixels per value of an attention output (a side): its stride, or a patch's side."""
    if spec.kind == "token_grid":
        assert spec.grid is not None  # the manifest's check
        return chip // spec.grid[0]
    return spec.stride


def cells_valid(valid: np.ndarray, cell_h: int, cell_w: int) -> np.ndarray:
    """Which ``cell_h x cell_w`` cells of an ``(H, W)`` mask hold any valid pixel.

    ``(ceil(H / cell_h), ceil(W / cell_w))`` bool; the last cells are cut by the edge.
    """
    h, w = valid.shape
    rows, cols = -(-h // cell_h), -(-w // cell_w)
    padded = np.zeros((rows * cell_h, cols * cell_w), dtype=bool)
    padded[:h, :w] = valid
    return np.asarray(padded.reshape(rows, cell_h, cols, cell_w).any(axis=(1, 3)))


@dataclass
class ChipOutputs:
    """A chip's outputs.

    Attributes:
        probabilities: ``(K,)`` float32.
        maps: attention output name -> ``(H, W)`` float32 on the chip's grid
            (``(heads, H, W)`` for several heads), NaN where the input had no
            data; or, from :meth:`ChipClassifier.native`, heads averaged and
            at the output's own resolution (one value per patch or per stride
            cell), NaN where a cell holds no valid pixel.
        weights: channel attention output name -> ``(C,)`` float32.
    """

    probabilities: np.ndarray
    maps: dict[str, np.ndarray]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


class ChipClassifier(SameShapeBatches):
    """Runs a chip classifier on one image at a time through its batcher."""

    unit: ClassVar[str] = "pixel"
    dated: ClassVar[bool] = False

    @staticmethod
    def manifest_problems(manifest: Manifest) -> list[str]:
        """One image input, a ``(B, K)`` prediction over named classes, maps as attention."""
        found: list[str] = []
        if len(manifest.tensors) != 1:
            found.append("tensors: a chip classifier takes one image input (B, C, H, W)")
        kinds = [(o.kind, len(o.shape)) for o in manifest.outputs if o.role == "prediction"]
        if kinds != [("class_probabilities", 2)]:
            found.append(
                "outputs: the prediction of an image_classification model is "
                "class_probabilities (B, K)"
            )
        if len(manifest.classes) < 2:
            found.append(
                f"classes: a chip classifier names 2 or more classes, not {len(manifest.classes)}"
            )
        if manifest.input.gsd_m is not None:
            found.append("input.gsd_m: a chip classifier takes chips as sent; leave gsd_m out")
        chip = chip_shape(manifest)
        for i, out in enumerate(manifest.outputs):
            if out.role != "attention":
                continue
            if out.kind not in ATTENTION_KINDS:
                found.append(
                    f"outputs[{i}].kind: a chip classifier's attention is "
                    f"{', '.join(ATTENTION_KINDS)}, not {out.kind!r}"
                )
            elif out.kind == "spatial" and len(out.shape) != 4:
                found.append(f"outputs[{i}].shape: a spatial map is (B, 1, h, w), not {out.shape}")
            elif out.kind == "token_grid":
                found.extend(_grid_problems(i, out, chip))
        return found

    @staticmethod
    def warmup_sizes(manifest: Manifest, cuda_active: bool) -> tuple[int | None, ...]:
        """The chip's side: the fixed one, else the manifest's tile size."""
        chip = chip_shape(manifest)
        return (chip[0] if chip else manifest.input.tile_size,)

    @staticmethod
    def scene_tile(manifest: Manifest) -> int:
        """Chip classifiers run no scene jobs; the chip's side stands in for a tile."""
        chip = chip_shape(manifest)
        return chip[0] if chip else manifest.input.tile_size or 256

    @staticmethod
    def tile_step(manifest: Manifest) -> int:
        """The model's size multiple."""
        return manifest.input.size_multiple or 1

    @staticmethod
    def outputs_per_unit(manifest: Manifest) -> float:
        """Bytes per input pixel: each attention map is served on the chip's grid."""
        return 4.0 * len(map_outputs(manifest))

    @classmethod
    def scene_bytes(cls, manifest: Manifest, load: SceneLoad) -> int:
        """Peak bytes of ``load.max_batch`` chips running and ``load.in_flight`` waiting."""
        bands = len(manifest.input.bands)
        side = load.tile * load.tile
        out = cls.outputs_per_unit(manifest)
        running = load.max_batch * side * (load.per_unit + 3 * out + bands * 4)
        return int(running + load.in_flight * side * (3 * bands * 4 + 2))

    def __init__(self, manifest: Manifest, batcher: DynamicBatcher) -> None:
        self.manifest = manifest
        self.batcher = batcher
        self.input_name = manifest.tensors[0].name

    async def _run(
        self, image: np.ndarray, valid: np.ndarray | None, timeout_s: float
    ) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """The model's raw outputs of one chip, and the padded chip's ``(H, W)``."""
        _, h, w = image.shape
        chip = chip_shape(self.manifest)
        if chip is not None and (h, w) != chip:
            raise InvalidInput(
                f"this model classifies chips of {chip[1]} x {chip[0]} pixels (width x height); "
                f"the image is {w} x {h}"
            )
        x = image.astype(np.float32, copy=False)
        if valid is not None:
            x = np.where(valid[None], x, np.float32(self.manifest.input.normalization.mean[0]))
            x = np.nan_to_num(x, copy=False)
        padded, _ = pad_to_multiple(x, self.manifest.input.size_multiple or 1)
        outputs = await self.batcher.submit({self.input_name: padded[None]}, timeout_s)
        return outputs, (padded.shape[1], padded.shape[2])

    def _probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(outputs[self.manifest.prediction.name][0], dtype=np.float32)

    def _weights(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Channel weights ``(C,)`` of each channel output, from ``(C,)`` or ``(C, 1, 1)``."""
        return {
            spec.name: np.asarray(outputs[spec.name][0], dtype=np.float32).reshape(-1)
            for spec in self.manifest.attention
            if spec.kind == "channel"
        }

    async def predict(
        self, image: np.ndarray, valid: np.ndarray | None, timeout_s: float
    ) -> ChipOutputs:
        """Classify one chip: ``image``, ``valid`` and ``timeout_s`` as for segmentation.

        Raises:
            InvalidInput: the chip is not of the size a fixed-size model takes.
        """
        _, h, w = image.shape
        outputs, (ph, pw) = await self._run(image, valid, timeout_s)
        maps: dict[str, np.ndarray] = {}
        for spec in map_outputs(self.manifest):
            out = outputs[spec.name][0]
            # One map per head: (heads, N) tokens, (heads, h, w) maps.
            if spec.kind == "token_grid":
                assert spec.grid is not None  # the manifest's check
                heads = out if out.ndim == 2 else out[None]
                values = np.stack([token_map(t, spec.grid, h, w) for t in heads])
            else:
                full = [upsample(o, spec.stride, ph, pw)[:h, :w] for o in out]
                values = np.stack(full).astype(np.float32)
            if valid is not None:
                values[:, ~valid] = np.nan
            maps[spec.name] = values if len(values) > 1 else values[0]
        return ChipOutputs(self._probabilities(outputs), maps, self._weights(outputs))

    async def native(
        self, image: np.ndarray, valid: np.ndarray | None, timeout_s: float
    ) -> ChipOutputs:
        """Classify one chip as :meth:`predict` does; its maps stay at their own resolution.

        A token grid gives ``(h, w)`` patch weights, a spatial map its
        ``ceil(H / stride) x ceil(W / stride)`` cells over the chip; heads averaged.
        """
        _, h, w = image.shape
        outputs, _ = await self._run(image, valid, timeout_s)
        maps: dict[str, np.ndarray] = {}
        for spec in map_outputs(self.manifest):
            out = np.asarray(outputs[spec.name][0], dtype=np.float32)
            if spec.kind == "token_grid":
                assert spec.grid is not None  # the manifest's check
                rows, cols = spec.grid
                values = np.array((out.mean(axis=0) if out.ndim == 2 else out).reshape(rows, cols))
                cell = (h // rows, w // cols)
            else:
                cell = (spec.stride, spec.stride)
                cells = out.mean(axis=0)  # (heads, h, w): the heads' mean
                values = np.array(cells[: -(-h // spec.stride), : -(-w // spec.stride)])
            if valid is not None:
                values[~cells_valid(valid, *cell)] = np.nan
            maps[spec.name] = values
        return ChipOutputs(self._probabilities(outputs), maps, self._weights(outputs))
