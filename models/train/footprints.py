"""Train the footprints Attention U-Net: ``attnserve train footprints``.

By default it trains on seeded synthetic scenes (``models.data.buildings``),
made on the fly, and scores held-out scenes made from a different seed. With
``--image`` and ``--labels`` it trains on random crops of a real GeoTIFF with
GeoJSON footprints instead, holding out the bottom part of the image for scores.

Writes ``OUT/footprints.pt`` (for ``attnserve export``) and ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.attention_unet import DEFAULT_BANDS, AttentionUNet, build
from models.data.buildings import SceneConfig, make_batch
from models.metrics import footprint_scores
from models.train.common import save_checkpoint, seed_everything, set_threads, write_metrics

# Validation scenes come from this offset of the training seed, so they are
# never among the training scenes; the shipped-model test uses yet another seed.
VALIDATION_SEED_OFFSET = 1_000_003
# Fraction of a real image's rows (at the bottom) kept out of training.
HOLDOUT_FRACTION = 0.2

TINY = {
    "steps": 3,
    "batch_size": 2,
    "tile_size": 32,
    "width": 4,
    "val_tiles": 2,
    "val_size": 64,
}

Batch = tuple[np.ndarray, np.ndarray]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the trainer's command-line options."""
    parser.add_argument("--out", type=Path, default=Path("runs/footprints"), help="output folder")
    parser.add_argument("--image", type=Path, default=None, help="real GeoTIFF (8-bit RGB)")
    parser.add_argument("--labels", type=Path, default=None, help="GeoJSON footprints")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per step")
    parser.add_argument("--tile-size", type=int, default=128, help="training tile side (px)")
    parser.add_argument("--width", type=int, default=16, help="channels of the finest level")
    parser.add_argument("--depth", type=int, default=4, help="downsamplings (gated skips)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--val-tiles", type=int, default=48, help="held-out tiles to score")
    parser.add_argument("--val-size", type=int, default=256, help="held-out tile side (px)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget: the schedule anneals and training stops within it",
    )
    for name, what in (
        ("snow", "snow-covered"),
        ("forest", "with a patch of closed forest"),
        ("lots", "with paved lots"),
    ):
        parser.add_argument(
            f"--{name}",
            type=float,
            default=0.0,
            help=f"synthetic data: probability of a tile {what} (default 0)",
        )
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run, for CI")
    parser.add_argument("--name", default="footprints", help="model name in the manifest")
    parser.add_argument("--version", default="1.0.0", help="model version in the manifest")


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice, which keeps small buildings from vanishing."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return bce + dice.mean()


def _learning_rate(peak: float, progress: float) -> float:
    """Linear warm-up over the first 5% of training, then cosine decay to 1% of peak."""
    if progress < 0.05:
        return peak * (0.1 + 0.9 * progress / 0.05)
    t = (progress - 0.05) / 0.95
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def _to_tensors(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(B, C, H, W)`` and masks ``(B, H, W)`` -> float32 tensors.

    Returns:
        Raw values ``(B, C, H, W)`` float32 and targets ``(B, 1, H, W)`` float32.
    """
    x = torch.from_numpy(images.astype(np.float32))
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    return x, y


def _random_crops(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, n: int, size: int
) -> Batch:
    """``n`` random crops with random flips and quarter turns.

    Returns:
        ``(n, C, size, size)`` uint8 and ``(n, size, size)`` uint8.
    """
    _, h, w = image.shape
    ims, ms = [], []
    for _ in range(n):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        im, m = image[:, y : y + size, x : x + size], mask[y : y + size, x : x + size]
        k = int(rng.integers(4))
        im, m = np.rot90(im, k, axes=(1, 2)), np.rot90(m, k)
        if rng.random() < 0.5:
            im, m = im[:, :, ::-1], m[:, ::-1]
        ims.append(np.ascontiguousarray(im))
        ms.append(np.ascontiguousarray(m))
    return np.stack(ims), np.stack(ms)


def _tiles(image: np.ndarray, mask: np.ndarray, size: int) -> Batch:
    """Non-overlapping ``size`` tiles covering as much of the image as whole tiles can."""
    _, h, w = image.shape
    ims, ms = [], []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            ims.append(image[:, y : y + size, x : x + size])
            ms.append(mask[y : y + size, x : x + size])
    if not ims:
        raise ValueError(f"held-out part {h}x{w} is smaller than one {size}x{size} tile")
    return np.stack(ims), np.stack(ms)


def predict_masks(model: AttentionUNet, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Binary building masks (probability >= 0.5).

    Args:
        model: the network, switched to eval mode here.
        images: ``(N, C, H, W)`` uint8 raw values.

    Returns:
        ``(N, H, W)`` bool.
    """
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size].astype(np.float32))
            logits, _, _ = model.forward_logits(x)
            out.append((logits[:, 0] >= 0).numpy())
    return np.concatenate(out)


def _data(
    args: argparse.Namespace, rng: np.random.Generator
) -> tuple[Callable[[], Batch], Batch, dict[str, Any]]:
    """The training batch source, the held-out set and a description of both."""
    size, bs = args.tile_size, args.batch_size
    if args.image is None:
        scenes = SceneConfig(snow=args.snow, forest=args.forest, lots=args.lots)
        val_rng = np.random.default_rng(args.seed + VALIDATION_SEED_OFFSET)
        held_out = make_batch(val_rng, args.val_tiles, args.val_size, scenes)
        info = {
            "data": "synthetic aerial-like scenes (models.data.buildings), made on the fly; "
            f"snow {args.snow:g}, forest {args.forest:g}, paved lots {args.lots:g}",
            "held_out": f"{args.val_tiles} synthetic {args.val_size}x{args.val_size} tiles, "
            f"seed {args.seed + VALIDATION_SEED_OFFSET}",
        }
        return lambda: make_batch(rng, bs, size, scenes), held_out, info

    from models.data.footprint_labels import read_footprints

    image, mask = read_footprints(args.image, args.labels, bands=len(DEFAULT_BANDS))
    # The manifest promises 8-bit input (0..255); other value scales would train
    # a model whose in-graph normalisation does not fit what it is served.
    if image.dtype != np.uint8:
        raise SystemExit(f"{args.image.name} is {image.dtype}; the footprints model takes uint8")
    split = int(image.shape[1] * (1.0 - HOLDOUT_FRACTION))
    train_im, train_m = image[:, :split], mask[:split]
    if split < size or train_im.shape[2] < size:
        raise ValueError(f"training part {train_im.shape[1:]} is smaller than tile {size}")
    multiple = 2**args.depth
    val_size = max(multiple, min(args.val_size, image.shape[1] - split) // multiple * multiple)
    held_out = _tiles(image[:, split:], mask[split:], val_size)
    info = {
        "data": f"{args.image.name} with footprints {args.labels.name}: random crops of the "
        f"top {split} rows",
        "held_out": f"{len(held_out[0])} tiles of {val_size}x{val_size} from the bottom "
        f"{image.shape[1] - split} rows",
    }
    return lambda: _random_crops(rng, train_im, train_m, bs, size), held_out, info


def _batches(source: Callable[[], Batch]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield _to_tensors(*source())


def run(args: argparse.Namespace) -> int:
    """Train, score on held-out data, and write the checkpoint and metrics."""
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    if (args.image is None) != (args.labels is None):
        raise SystemExit("--image and --labels go together")
    multiple = 2**args.depth
    if args.tile_size % multiple or args.val_size % multiple:
        raise SystemExit(f"--tile-size and --val-size must be multiples of {multiple} (2**depth)")
    set_threads(args.threads)
    rng = seed_everything(args.seed)
    config: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "bands": list(DEFAULT_BANDS),
        "width": args.width,
        "depth": args.depth,
    }
    model = build(config)
    source, held_out, data_info = _data(args, rng)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget_s = None if args.max_minutes is None else 60.0 * args.max_minutes
    start = time.monotonic()
    steps_done = 0
    model.train()
    bar = tqdm(total=args.steps, desc="train")
    for step, (x, y) in zip(range(args.steps), _batches(source), strict=False):
        # Progress is the larger of steps and time spent, so that on a busy
        # machine the schedule still anneals fully within --max-minutes.
        progress = step / args.steps
        if budget_s is not None:
            progress = max(progress, (time.monotonic() - start) / budget_s)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = _learning_rate(args.lr, progress)
        logits, _, _ = model.forward_logits(x)
        loss = _loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_done = step + 1
        bar.update()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    wall = time.monotonic() - start

    preds = predict_masks(model, held_out[0])
    scores = footprint_scores(preds, held_out[1].astype(bool))
    metrics = {k: round(v, 4) for k, v in scores.items()}
    training = {
        **data_info,
        "seed": args.seed,
        "steps": steps_done,
        "stopped_early": steps_done < args.steps,
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "lr": args.lr,
        "loss": "binary cross-entropy + soft Dice",
        "optimizer": "AdamW, linear warm-up then cosine decay",
        "wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    save_checkpoint(
        args.out / "footprints.pt",
        family="footprints",
        config=config,
        model=model,
        metrics=metrics,
        training=training,
    )
    write_metrics(args.out / "metrics.json", {**metrics, "wall_time_s": training["wall_time_s"]})
    print(f"trained {steps_done} steps in {wall:.0f} s on {training['threads']} threads")
    print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"wrote {args.out / 'footprints.pt'} and {args.out / 'metrics.json'}")
    return 0
