"""Train the L-TAE crop classifier: ``attnserve train crops``.

Synthetic, cloudy series by default (``models.data.crops``); ``--data FILE.npz``
trains on a real data set instead (``models.data.crop_npz``), holding out a
seeded share of it. Writes ``OUT/crops.pt`` (for ``attnserve export``) and
``OUT/metrics.json`` with held-out metrics.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.data.crop_npz import CropDataError, read_crop_npz
from models.data.crops import BANDS, CropSeries, make_crop_series
from models.ltae import build
from models.train.common import save_checkpoint, seed_everything, set_threads, write_metrics

FAMILY_NAME = "crops"
HELD_OUT_FRACTION = 0.2
# Offset between the training seed and the synthetic held-out set's seed, so the
# held-out parcels are never the training parcels.
HELD_OUT_SEED_OFFSET = 1_000_003


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the crops trainer's options on ``parser``."""
    parser.add_argument("--out", type=Path, default=Path("runs/crops"), help="output folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="real data set (.npz); synthetic if omitted"
    )
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    parser.add_argument("--samples", type=int, default=16000, help="synthetic training parcels")
    parser.add_argument("--batch-size", type=int, default=128, help="parcels per batch")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--d-model", type=int, default=64, help="width of the encoded dates")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--name", default="crops", help="model name in the manifest")
    parser.add_argument("--version", default="1.0.0", help="model version in the manifest")
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model on little data, in seconds (for CI)"
    )


def _tensors(data: CropSeries) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(data.series, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.days, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.valid, dtype=bool)),
        torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64)),
    )


def band_statistics(data: CropSeries) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of the valid dates of ``data``."""
    values = data.series[data.valid].astype(np.float64)  # (dates, C)
    std = np.maximum(values.std(axis=0), 1.0)
    return values.mean(axis=0).tolist(), std.tolist()


def predict(
    model: nn.Module, data: CropSeries, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, K)`` and attention ``(N, heads, T)`` of ``model`` on ``data``."""
    series, days, valid, _ = _tensors(data)
    probs, attn = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            p, a = model(
                series[i : i + batch_size], days[i : i + batch_size], valid[i : i + batch_size]
            )
            probs.append(p.numpy())
            attn.append(a.numpy())
    return np.concatenate(probs), np.concatenate(attn)


def cloud_attention_ratio(attention: np.ndarray, valid: np.ndarray, cloudy: np.ndarray) -> float:
    """How much attention unflagged clouds get, relative to clear dates.

    Attention is averaged over heads and scaled per parcel by its number of
    valid dates, so 1 means "as much as a uniform weighting would give" whatever
    the series length. The ratio is the mean scaled weight over all unflagged
    cloudy dates divided by the mean scaled weight over all clear valid dates,
    pooled over the parcels that have both kinds of date.

    Args:
        attention: ``(N, heads, T)`` attention weights.
        valid: ``(N, T) bool`` valid mask given to the model.
        cloudy: ``(N, T) bool`` true cloud mask.

    Returns:
        The ratio (0 when clouds get no weight, 1 when they get as much as clear
        dates), or NaN if no parcel has both unflagged-cloudy and clear dates.
    """
    weight = attention.mean(axis=1) * valid.sum(axis=1, keepdims=True)
    hidden_cloud = valid & cloudy
    clear = valid & ~cloudy
    both = hidden_cloud.any(axis=1) & clear.any(axis=1)
    if not both.any():
        return math.nan
    cloud_mean = weight[both][hidden_cloud[both]].mean()
    clear_mean = weight[both][clear[both]].mean()
    return float(cloud_mean / clear_mean)


def classification_metrics(
    labels: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...] | list[str]
) -> dict[str, float]:
    """Overall accuracy, Cohen's kappa, macro F1 and per-class F1 (``f1_<class>``)."""
    K = len(class_names)
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    total = confusion.sum()
    accuracy = np.trace(confusion) / total
    expected = (confusion.sum(0) * confusion.sum(1)).sum() / total**2
    kappa = (accuracy - expected) / (1 - expected) if expected < 1 else 1.0
    metrics = {"overall_accuracy": float(accuracy), "kappa": float(kappa)}
    f1s = []
    for k, name in enumerate(class_names):
        tp = confusion[k, k]
        denom = confusion[k, :].sum() + confusion[:, k].sum()
        f1 = 2 * tp / denom if denom else 0.0
        metrics[f"f1_{name}"] = float(f1)
        f1s.append(f1)
    metrics["macro_f1"] = float(np.mean(f1s))
    return metrics


def evaluate(model: nn.Module, data: CropSeries) -> dict[str, float]:
    """Held-out metrics of ``model`` on ``data`` (cloud ratio only where clouds are known)."""
    probabilities, attention = predict(model, data)
    metrics = classification_metrics(data.labels, probabilities.argmax(1), data.class_names)
    if data.cloudy is not None:
        metrics["cloud_attention_ratio"] = cloud_attention_ratio(attention, data.valid, data.cloudy)
    metrics["held_out_samples"] = float(len(data))
    return metrics


def _load_data(args: argparse.Namespace) -> tuple[CropSeries, CropSeries, str]:
    """Training and held-out sets, and a line saying what they are."""
    if args.data is not None:
        data = read_crop_npz(args.data, bands=BANDS)
        order = np.random.default_rng(args.seed).permutation(len(data))
        n_test = max(1, round(len(data) * HELD_OUT_FRACTION))
        if n_test >= len(data):
            raise CropDataError(f"{args.data} has too few samples ({len(data)}) to hold any out")
        desc = (
            f"{args.data.name}: {len(data) - n_test} train / {n_test} held out (seed {args.seed})"
        )
        return data.subset(order[n_test:]), data.subset(order[:n_test]), desc
    n_test = max(100, args.samples // 4)
    train = make_crop_series(args.samples, seed=args.seed)
    test = make_crop_series(n_test, seed=args.seed + HELD_OUT_SEED_OFFSET)
    desc = (
        f"synthetic cloudy series (models.data.crops): {args.samples} train (seed {args.seed}), "
        f"{n_test} held out (seed {args.seed + HELD_OUT_SEED_OFFSET})"
    )
    return train, test, desc


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on held-out parcels and write the checkpoint and metrics."""
    if args.tiny:
        args.samples, args.epochs = min(args.samples, 400), min(args.epochs, 2)
        args.heads, args.d_model = 2, 16
    set_threads(args.threads)
    threads = torch.get_num_threads()
    seed_everything(args.seed)
    started = time.perf_counter()
    train, test, data_desc = _load_data(args)
    mean, std = band_statistics(train)
    config: dict[str, Any] = {
        "name": args.name,
        "version": args.version,
        "bands": list(train.bands),
        "class_names": list(train.class_names),
        "d_model": args.d_model,
        "heads": args.heads,
        "d_k": 8,
        "hidden": args.d_model,
        "band_mean": mean,
        "band_std": std,
    }
    model = build(config)
    series, days, valid, labels = _tensors(train)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        total = 0.0
        for step in bar:
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            # Dropping a few valid dates at random teaches the model not to lean
            # on any single acquisition, as real series miss dates too.
            keep = torch.rand(idx.shape[0], valid.shape[1], generator=gen) > 0.1
            batch_valid = valid[idx] & keep
            emptied = ~batch_valid.any(dim=1, keepdim=True)
            batch_valid = torch.where(emptied, valid[idx], batch_valid)
            logits, _ = model.logits(series[idx], days[idx], batch_valid)
            loss = loss_fn(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        bar.close()
    wall = time.perf_counter() - started
    metrics = evaluate(model, test)
    training = {
        "data": data_desc,
        "seed": args.seed,
        "epochs": args.epochs,
        "samples": len(train),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "wall_time_s": round(wall, 1),
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    out = Path(args.out)
    save_checkpoint(
        out / "crops.pt",
        family=FAMILY_NAME,
        config=config,
        model=model,
        metrics=metrics,
        training=training,
    )
    write_metrics(out / "metrics.json", {"metrics": metrics, "training": training})
    print(f"trained in {wall:.1f} s on {threads} threads; held-out metrics:")
    for key, value in sorted(metrics.items()):
        print(f"  {key}: {value:.4f}")
    print(f"wrote {out / 'crops.pt'} and {out / 'metrics.json'}")
    return 0
