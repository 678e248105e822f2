"""Train the L-TAE crop classifier: ``attnserve train crops``.

Synthetic, cloudy Sentinel-2 series by default (``models.data.crops``);
``--data FILE.npz`` trains on a real data set of any band set instead
(``models.data.crop_npz``): the model takes that file's bands, classes and value
range, and normalises with its per-band statistics. Samples with ``lonlat`` are
held out by location (whole spatial blocks), others at random. Real data gets
unflagged synthetic clouds injected into random dates while training, so the
attention learns to pass them over, and is measured on held-out series with
such clouds too. Writes ``OUT/crops.pt`` (for ``attnserve export``) and
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

from models.data.crop_clouds import inject_clouds, is_index_band, value_scale, with_clouds
from models.data.crop_npz import CropDataError, read_crop_npz
from models.data.crop_split import split_at_random, split_by_location
from models.data.crops import CropSeries, make_crop_series
from models.ltae import build
from models.train.common import save_checkpoint, seed_everything, set_threads, write_metrics

FAMILY_NAME = "crops"
HELD_OUT_FRACTION = 0.2
# Offset between the training seed and the synthetic held-out set's seed, so the
# held-out parcels are never the training parcels; real data uses it to seed the
# clouds put on held-out series, which then differ from any seen in training.
HELD_OUT_SEED_OFFSET = 1_000_003
# Share of valid held-out dates covered by an unflagged cloud when measuring how
# much attention such dates get (real data).
EVAL_CLOUD_PROBABILITY = 0.2
_INT_DTYPES = ("uint8", "uint16", "int16", "int32")


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
        "--held-out", type=float, default=HELD_OUT_FRACTION, help="share of --data samples held out"
    )
    parser.add_argument(
        "--split",
        choices=("auto", "location", "random"),
        default="auto",
        help="hold out whole spatial blocks (location) or random samples; "
        "auto: by location when the data has lonlat",
    )
    parser.add_argument(
        "--block-deg", type=float, default=0.5, help="side of the spatial blocks, in degrees"
    )
    parser.add_argument(
        "--cloud-probability",
        type=float,
        default=None,
        help="share of valid training dates given an unflagged synthetic cloud "
        "(default 0.25 with --data, 0 for synthetic data, which has its own clouds)",
    )
    parser.add_argument(
        "--class-weights",
        choices=("none", "balanced"),
        default="none",
        help="weigh the loss by inverse class frequency (balanced) for rare classes",
    )
    parser.add_argument(
        "--units", default=None, help="units of the values, for the manifest (default: guessed)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model on little data, in seconds (for CI)"
    )


def _tensors(data: CropSeries) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # NaN on invalid dates (padding, nodata) does not reach the outputs but would
    # reach the gradients (0 x NaN), so training sees zeros there.
    series = np.where(data.valid[..., None], data.series, 0.0)
    return (
        torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.days, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(data.valid, dtype=bool)),
        torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64)),
    )


def band_statistics(data: CropSeries) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of the valid dates of ``data``."""
    values = data.series[data.valid].astype(np.float64)  # (dates, C)
    std = np.maximum(values.std(axis=0), 1.0)
    return values.mean(axis=0).tolist(), std.tolist()


def input_description(data: CropSeries, units: str | None = None) -> dict[str, Any]:
    """Value range, accepted dtypes and units of the valid values of ``data``, for the manifest.

    The range is what the data holds, rounded outward (from 0 where nothing is
    negative); integer dtypes are accepted where the values are whole numbers or
    stored x 10000 (where fractions carry nothing), and only those whose range
    covers the data's.
    """
    values = data.series[data.valid].astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    step = 10.0 ** (math.floor(math.log10(max(hi - lo, 1e-6))) - 1)
    # Non-negative data (reflectance) starts at 0: darker targets than any seen
    # in training are still on the same scale.
    lo, hi = (math.floor(lo / step) * step if lo < 0 else 0.0), math.ceil(hi / step) * step
    if hi <= lo:
        hi = lo + step
    scale = value_scale(data.series, data.valid)
    whole = bool(np.all(values == np.round(values))) or scale > 1
    dtypes = [d for d in _INT_DTYPES if whole and np.iinfo(d).min <= lo and hi <= np.iinfo(d).max]
    if units is None:
        index = [is_index_band(b) for b in data.bands]
        kind = (
            "spectral index"
            if all(index)
            else "surface reflectance and spectral indices"
            if any(index)
            else "surface reflectance"
        )
        units = f"{kind} x 10000" if scale > 1 else kind
    return {
        "value_range": [round(lo, 6), round(hi, 6)],
        "accepted_dtypes": [*dtypes, "float32", "float64"],
        "units": units,
    }


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
    """Overall accuracy, Cohen's kappa, macro F1 and per-class F1 (``f1_<class>``).

    F1 is reported, and averaged, for the classes present in ``labels``: a class
    with no held-out samples (kept out of a spatial hold-out, say) has no F1, and
    its wrong predictions count against the recall of the classes they hit.
    """
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
        if not confusion[k, :].sum():
            continue
        denom = confusion[k, :].sum() + confusion[:, k].sum()
        f1 = 2 * tp / denom
        metrics[f"f1_{name}"] = float(f1)
        f1s.append(f1)
    metrics["macro_f1"] = float(np.mean(f1s))
    return metrics


def evaluate(model: nn.Module, data: CropSeries, cloud_seed: int | None = None) -> dict[str, float]:
    """Held-out metrics of ``model`` on ``data``.

    Where ``data`` knows its clouds, the cloud attention ratio on them. With a
    ``cloud_seed`` (real data, clouds unknown), also the metrics on a copy of
    ``data`` with seeded unflagged clouds on :data:`EVAL_CLOUD_PROBABILITY` of its
    valid dates: ``cloudy_overall_accuracy``, ``cloudy_macro_f1`` and the ratio.
    """
    probabilities, attention = predict(model, data)
    metrics = classification_metrics(data.labels, probabilities.argmax(1), data.class_names)
    if data.cloudy is not None:
        metrics["cloud_attention_ratio"] = cloud_attention_ratio(attention, data.valid, data.cloudy)
    elif cloud_seed is not None:
        clouded = with_clouds(data, cloud_seed, EVAL_CLOUD_PROBABILITY)
        assert clouded.cloudy is not None
        probabilities, attention = predict(model, clouded)
        cloudy = classification_metrics(
            clouded.labels, probabilities.argmax(1), clouded.class_names
        )
        metrics["cloudy_overall_accuracy"] = cloudy["overall_accuracy"]
        metrics["cloudy_macro_f1"] = cloudy["macro_f1"]
        metrics["cloud_attention_ratio"] = cloud_attention_ratio(
            attention, clouded.valid, clouded.cloudy
        )
    metrics["held_out_samples"] = float(len(data))
    return metrics


def _load_data(args: argparse.Namespace) -> tuple[CropSeries, CropSeries, str]:
    """Training and held-out sets, and a line saying what they are."""
    if args.data is not None:
        data = read_crop_npz(args.data)
        by_location = args.split == "location" or (args.split == "auto" and data.lonlat is not None)
        try:
            if by_location:
                split = split_by_location(data, args.held_out, args.block_deg, args.seed)
            else:
                split = split_at_random(data, args.held_out, args.seed)
        except ValueError as exc:
            raise CropDataError(f"{args.data}: {exc}") from exc
        desc = (
            f"{args.data.name}: {len(data)} samples of bands {', '.join(data.bands)}; "
            f"{len(split.train)} train, {split.description}"
        )
        return data.subset(split.train), data.subset(split.test), desc
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
    real = args.data is not None
    clouds = args.cloud_probability
    if clouds is None:
        clouds = 0.25 if real else 0.0
    scale = value_scale(train.series, train.valid)
    cloud_rng = np.random.default_rng([args.seed, 1])
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
        **input_description(train, args.units),
    }
    model = build(config)
    series, days, valid, labels = _tensors(train)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    weight = None
    if args.class_weights == "balanced":
        counts = np.bincount(train.labels, minlength=len(train.class_names)).astype(np.float64)
        weight = torch.tensor(
            len(train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32
        )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)
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
            batch_series = series[idx]
            if clouds > 0:
                clouded, _ = inject_clouds(
                    batch_series.numpy(), valid[idx].numpy(), train.bands, cloud_rng, clouds, scale
                )
                batch_series = torch.from_numpy(clouded)
            logits, _ = model.logits(batch_series, days[idx], batch_valid)
            loss = loss_fn(logits, labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        bar.close()
    wall = time.perf_counter() - started
    metrics = evaluate(model, test, args.seed + HELD_OUT_SEED_OFFSET if real else None)
    training = {
        "data": data_desc,
        "seed": args.seed,
        "epochs": args.epochs,
        "samples": len(train),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "cloud_probability": clouds,
        "class_weights": args.class_weights,
        **(
            {
                "split": args.split,
                "held_out": args.held_out,
                "block_deg": args.block_deg,
                "eval_cloud_probability": EVAL_CLOUD_PROBABILITY,
                "eval_cloud_seed": args.seed + HELD_OUT_SEED_OFFSET,
            }
            if real
            else {}
        ),
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
