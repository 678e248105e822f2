"""Train the footprints Attention U-Net: ``attnserve train footprints``.

Data, in the forms users have (they combine):

* nothing: seeded synthetic scenes (``models.data.buildings``) made on the fly;
* ``--image`` with ``--labels`` (GeoJSON footprints) or ``--mask`` (a raster
  whose ``--mask-value`` or ``--mask-color`` marks buildings);
* ``--data DIR``: folders of image/mask pairs (``images/`` + ``masks/``, or
  ``<group>/images`` + ``<group>/masks`` such as the Dubai set's ``Tile N``);
* ``--negatives``: images without buildings;
* ``--synthetic-ratio``: a share of synthetic tiles mixed into real batches.

Validation holds out whole groups (``--holdout``): a folder such as ``Tile 7``,
or a single image. With one image only, its bottom rows are held out instead.
The input bands, value range and normalisation come from the data and go into
the checkpoint, hence the manifest. Writes ``OUT/footprints.pt`` (for
``attnserve export``) and ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.attention_unet import EXPORT_DEPTH, build
from models.data.augment import Radiometry
from models.data.buildings import SceneConfig, make_batch
from models.data.footprint_mix import UNKNOWN_CLASS, MixConfig, TrainingMix
from models.data.footprint_sources import LabelledImage, load_negatives
from models.data.rasters import RasterDataError
from models.train.common import save_checkpoint, seed_everything, set_threads, write_metrics
from models.train.footprints_data import aux_rules, data_spec, real_images, split
from models.train.footprints_eval import evaluate

# Validation scenes come from this offset of the training seed, so they are
# never among the training scenes; the shipped-model test uses yet another seed.
VALIDATION_SEED_OFFSET = 1_000_003
# Gate targets stay inside (floor, 1 - floor): a pull towards the mask that
# never asks for a fully closed gate, so the skip keeps some context outside.
GATE_TARGET_FLOOR = 0.1
RADIOMETRY = ", band gain, brightness, contrast, gamma, haze, blur, noise"

TINY = {
    "steps": 3,
    "batch_size": 2,
    "tile_size": 32,
    "width": 4,
    "val_tiles": 2,
    "val_size": 64,
}


def _pair(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.replace(",", " ").split())
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the trainer's command-line options."""
    a = parser.add_argument
    a("--out", type=Path, default=Path("runs/footprints"), help="output folder")
    a("--image", type=Path, default=None, help="one real image (GeoTIFF, PNG or JPEG)")
    a("--labels", type=Path, default=None, help="GeoJSON footprints of --image")
    a("--mask", type=Path, default=None, help="mask raster of --image (same size)")
    a(
        "--data",
        type=Path,
        action="append",
        default=[],
        help="folder of image/mask pairs "
        "(images/ + masks/, or <group>/images + <group>/masks); repeatable",
    )
    a("--mask-value", type=float, default=None, help="building value of one-band masks")
    a("--mask-color", default=None, help="building colour of RGB or palette masks, '#RRGGBB'")
    a(
        "--negatives",
        type=Path,
        action="append",
        default=[],
        help="image file or folder of images without buildings; repeatable",
    )
    a(
        "--holdout",
        action="append",
        default=None,
        help="group held out for validation "
        "(a folder such as 'Tile 7', or an image or negative's file stem); repeatable",
    )
    a(
        "--synthetic-ratio",
        type=float,
        default=0.0,
        help="share of synthetic tiles in batches of real data (RGB 0..255 data only)",
    )
    a("--negative-ratio", type=float, default=0.15, help="share of crops from --negatives")
    a(
        "--balance",
        choices=("pixels", "groups"),
        default="pixels",
        help="draw crops by pixel count (default), or each group (e.g. a 'Tile N' folder) "
        "as often as any other",
    )
    a(
        "--scale",
        type=_pair,
        default=(0.5, 2.0),
        metavar="'LO HI'",
        help="resampling range, source pixels per training pixel (default '0.5 2')",
    )
    a(
        "--negative-scale",
        type=_pair,
        default=(0.5, 8.0),
        metavar="'LO HI'",
        help="the same for negatives (default '0.5 8', for finer imagery)",
    )
    a(
        "--value-range",
        type=_pair,
        default=None,
        metavar="'LO HI'",
        help="raw values the imagery spans (default 0..255 for uint8; needed for uint16)",
    )
    a("--band-names", default=None, help="comma-separated band names (default: RGB or RGBN)")
    a(
        "--gsd",
        type=float,
        default=None,
        help="metres per pixel of the data (default: from a georeferenced image)",
    )
    a(
        "--model-gsd",
        type=float,
        default=None,
        help="metres per pixel the model works at (default: --gsd): crops are resampled to it "
        "(--scale and --negative-scale are multiplied by model-gsd / gsd) and the server "
        "resamples inputs to it",
    )
    a("--no-augment", action="store_true", help="no radiometric augmentation")
    a(
        "--gate-loss",
        type=float,
        default=0.1,
        help="weight of the loss pulling each attention gate to the building mask",
    )
    a(
        "--aux-class",
        action="append",
        default=[],
        metavar="NAME=COLOUR",
        help="another class of the mask rasters (e.g. road='#6EC1E4', or water=2 with "
        "--mask-value), segmented by a second head during training only: it teaches the "
        "model what the non-building ground is; repeatable",
    )
    a("--aux-loss", type=float, default=0.5, help="weight of the --aux-class loss")
    a("--steps", type=int, default=1500, help="optimiser steps")
    a("--batch-size", type=int, default=16, help="tiles per step")
    a("--tile-size", type=int, default=128, help="training tile side (px)")
    a("--width", type=int, default=16, help="channels of the finest level")
    a("--depth", type=int, default=4, help="downsamplings (gated skips)")
    a(
        "--context",
        type=int,
        default=0,
        help="dilated residual blocks after the bottleneck, for a wider field of view",
    )
    a("--lr", type=float, default=3e-3, help="peak learning rate")
    a("--seed", type=int, default=0, help="seed of data and weights")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a(
        "--bf16",
        action="store_true",
        help="forward and backward passes in bfloat16 autocast (weights, loss and the exported "
        "model stay float32); about 2x the steps per second on CPUs with AMX or AVX512-BF16",
    )
    a("--val-tiles", type=int, default=48, help="synthetic runs: held-out tiles to score")
    a("--val-size", type=int, default=256, help="synthetic runs: held-out tile side (px)")
    a(
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
        a(
            f"--{name}",
            type=float,
            default=0.0,
            help=f"synthetic data: probability of a tile {what} (default 0)",
        )
    a("--tiny", action="store_true", help="a seconds-long run, for CI")
    a("--name", default="footprints", help="model name in the manifest")
    a("--version", default="1.0.0", help="model version in the manifest")


def _loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gates: Sequence[torch.Tensor],
    gate_weight: float,
    aux: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """BCE plus soft Dice (keeps small buildings), plus the gates' pull to the mask.

    Each gate ``(B, 1, h, w)`` is compared with the building fraction of the
    mask at its own resolution, squeezed into ``(floor, 1 - floor)``. ``aux``:
    ``(class logits, class map, weight)`` adds the weighted cross-entropy of
    the auxiliary head over the pixels whose class is known.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    loss = bce + dice.mean()
    if gate_weight and gates:
        terms = []
        for g in gates:
            frac = F.adaptive_avg_pool2d(target, (g.shape[2], g.shape[3]))
            goal = GATE_TARGET_FLOOR + (1 - 2 * GATE_TARGET_FLOOR) * frac
            terms.append(F.binary_cross_entropy(g.clamp(1e-6, 1 - 1e-6), goal))
        loss = loss + gate_weight * torch.stack(terms).mean()
    if aux is not None:
        aux_logits, classes, aux_weight = aux
        if bool((classes != UNKNOWN_CLASS).any()):
            loss = loss + aux_weight * F.cross_entropy(
                aux_logits, classes, ignore_index=UNKNOWN_CLASS
            )
    return loss


def _learning_rate(peak: float, progress: float) -> float:
    """Linear warm-up over the first 5% of training, then cosine decay to 1% of peak."""
    if progress < 0.05:
        return peak * (0.1 + 0.9 * progress / 0.05)
    t = (progress - 0.05) / 0.95
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def run(args: argparse.Namespace) -> int:
    """Train, score on held-out data, and write the checkpoint and metrics."""
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    multiple = 2**args.depth
    if args.tile_size % multiple or args.val_size % multiple:
        raise SystemExit(f"--tile-size and --val-size must be multiples of {multiple} (2**depth)")
    if not 0.0 <= args.synthetic_ratio <= 1.0 or not 0.0 <= args.negative_ratio < 1.0:
        raise SystemExit("--synthetic-ratio and --negative-ratio are shares in 0..1")
    if args.context < 0:
        raise SystemExit(f"--context is a count of blocks, 0 or more; got {args.context}")
    if args.aux_loss < 0:
        raise SystemExit(f"--aux-loss is a weight, 0 or more; got {args.aux_loss}")
    if args.depth != EXPORT_DEPTH:
        # Said before the hour of training, not after it, by the exporter.
        print(
            f"note: a depth-{args.depth} model trains and is scored, but `attnserve export` "
            f"takes depth-{EXPORT_DEPTH} footprints models only"
        )
    set_threads(args.threads)
    rng = seed_everything(args.seed)
    scenes = SceneConfig(snow=args.snow, forest=args.forest, lots=args.lots)
    try:
        real = real_images(args)
        negatives = load_negatives(args.negatives)
    except RasterDataError as exc:
        raise SystemExit(str(exc)) from exc
    spec = data_spec(args, [*real, *negatives])
    data_gsd = spec["gsd_m"]
    scale, negative_scale = args.scale, args.negative_scale
    if args.model_gsd is not None:
        if not data_gsd:
            raise SystemExit("--model-gsd needs the data's --gsd (or georeferenced images)")
        # Source pixels per model pixel: the augmentation's range moves with the grid.
        f = args.model_gsd / data_gsd
        scale = (scale[0] * f, scale[1] * f)
        negative_scale = (negative_scale[0] * f, negative_scale[1] * f)
        spec["gsd_m"] = args.model_gsd
    if real:
        if args.synthetic_ratio and (len(spec["bands"]) != 3 or spec["value_range"] != [0, 255]):
            raise SystemExit("--synthetic-ratio needs 3-band imagery in 0..255 (synthetic is RGB)")
        try:
            train, held_out, held_info = split(args, real, negatives)
        except RasterDataError as exc:
            raise SystemExit(str(exc)) from exc
        synthetic_ratio = args.synthetic_ratio
        parts = sorted({i.group for i in train if not i.negative})
        mixed = (
            f"mixed with {synthetic_ratio:.0%} synthetic tiles"
            if synthetic_ratio
            else "no synthetic tiles"
        )
        n_real = len([i for i in train if not i.negative])
        data_info = f"{n_real} real image{'s' if n_real != 1 else ''} (groups " + (
            ", ".join(parts) + f"), {mixed}"
        )
    else:
        val_rng = np.random.default_rng(args.seed + VALIDATION_SEED_OFFSET)
        ims, ms = make_batch(val_rng, args.val_tiles, args.val_size, scenes)
        held_out = [
            LabelledImage(i, m, "synthetic", f"synthetic {k}")
            for k, (i, m) in enumerate(zip(ims, ms, strict=True))
        ]
        train, synthetic_ratio = list(negatives), 1.0
        held_info = f"{args.val_tiles} synthetic {args.val_size}x{args.val_size} tiles, " + (
            f"seed {args.seed + VALIDATION_SEED_OFFSET}"
        )
        data_info = (
            "synthetic aerial-like scenes (models.data.buildings), made on the fly; "
            f"snow {args.snow:g}, forest {args.forest:g}, paved lots {args.lots:g}"
        )
    if real and args.image is not None and args.labels is not None:
        data_info += f"; {args.image.name} with footprints {args.labels.name}"
    train_negatives = [i for i in train if i.negative]
    if train_negatives:
        data_info += "; negatives " + ", ".join(i.name for i in train_negatives)
    mix = TrainingMix(
        [i for i in train if not i.negative],
        train_negatives,
        MixConfig(
            tile_size=args.tile_size,
            scale=scale,
            negative_scale=negative_scale,
            synthetic_ratio=synthetic_ratio,
            negative_ratio=args.negative_ratio if train_negatives else 0.0,
            balance=args.balance,
            value_range=(spec["value_range"][0], spec["value_range"][1]),
            radiometry=None if args.no_augment else Radiometry(),
            scenes=scenes,
        ),
    )
    config: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "width": args.width,
        "depth": args.depth,
        "context": args.context,
        **{k: v for k, v in spec.items() if v is not None},
    }
    aux_names = [name for name, _ in aux_rules(args)] if real else []
    if aux_names:
        config["aux_classes"] = aux_names
    # Channels-last convolutions are oneDNN's fast path on CPU, in float32 and bfloat16.
    # (torch accepts memory_format in Module.to; its type stubs do not list it.)
    model = build(config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    budget_s = None if args.max_minutes is None else 60.0 * args.max_minutes
    start = time.monotonic()
    steps_done = 0
    model.train()
    bar = tqdm(total=args.steps, desc="train")
    for step in range(args.steps):
        # Progress is the larger of steps and time spent, so that on a busy
        # machine the schedule still anneals fully within --max-minutes.
        progress = step / args.steps
        if budget_s is not None:
            progress = max(progress, (time.monotonic() - start) / budget_s)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = _learning_rate(args.lr, progress)
        x, y, classes = mix.batch(rng, args.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits, gates, aux_logits = model.forward_train(
                x.contiguous(memory_format=torch.channels_last)
            )
        aux = None if aux_logits is None else (aux_logits.float(), classes, args.aux_loss)
        loss = _loss(logits.float(), y, [g.float() for g in gates], args.gate_loss, aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps_done = step + 1
        bar.update()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    wall = time.monotonic() - start

    metrics = {
        k: round(v, 4) for k, v in evaluate(model, held_out, spec["gsd_m"], data_gsd).items()
    }
    training = {
        "network": f"Attention U-Net, width {args.width}, depth {args.depth}"
        + (f", {args.context} dilated context blocks" if args.context else ""),
        "data": data_info,
        "held_out": held_info,
        "seed": args.seed,
        "steps": steps_done,
        "stopped_early": steps_done < args.steps,
        "batch_size": args.batch_size,
        "tile_size": args.tile_size,
        "scale": list(scale),
        "negative_scale": list(negative_scale),
        "balance": args.balance,
        "augmentation": "scale, rotation, flips"
        + (
            "" if args.no_augment else ", band gain, brightness, contrast, gamma, haze, blur, noise"
        ),
        "lr": args.lr,
        "loss": "binary cross-entropy + soft Dice"
        + (f" + {args.gate_loss:g} x gate-to-mask BCE" if args.gate_loss else "")
        + (
            f" + {args.aux_loss:g} x auxiliary cross-entropy over {', '.join(aux_names)}"
            if aux_names
            else ""
        ),
        "optimizer": "AdamW, linear warm-up then cosine decay",
        "wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "precision": "bfloat16 autocast" if args.bf16 else "float32",
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
