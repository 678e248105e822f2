"""INT8 against FP32 footprints on CPU: throughput at saturation and accuracy on held-out tiles.

``python -m bench.quantize`` makes two INT8 copies of the shipped footprints model
with ``attnserve quantize``'s code, calibrated on real Dubai imagery (Tiles 1-6):
everything quantised, and the attention gates kept in float32 (``/gates.``).
On the held-out Tiles 7 and 8 (512 px centre crops) it scores each copy against
float32 and against the hand-drawn building masks. Then it times the three
models with the server's session options, one after the other in each round
(rounds alternate the order), in the configurations the server runs on CPU: one
two-thread session at batch 1 and 4, and two one-thread sessions side by side
(``CPU_INSTANCES``). Saturation is a model's best configuration. Results go to
``bench/quantize/results.json`` and ``results.md`` with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import load_average, machine, report_head
from bench.raw import image_feed, measure, measure_side_by_side
from models.quantize import find_images, quantize_model, read_crop, split_images
from service.runtime.manifest import Manifest
from service.runtime.session import ModelSession, SessionOptions

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "models" / "shipped" / "footprints-2.2.0.onnx"
DUBAI = REPO.parent / "shared" / "data" / "footprints" / "dubai"
OUT_DIR = Path(__file__).resolve().parent
# Mask colour of buildings in the Dubai set (#3C1098).
BUILDING = (60, 16, 152)
TILE = 512
# (label, threads per session, batch, sessions side by side)
CONFIGS = [
    ("1 session x 2 threads, batch 1", 2, 1, 1),
    ("1 session x 2 threads, batch 4", 2, 4, 1),
    ("2 sessions x 1 thread, batch 1", 1, 1, 2),
]
# INT8 copies and the nodes each keeps in float32 (``--keep-float``).
VARIANTS: dict[str, list[str]] = {
    "int8": [],
    "int8-gates-fp32": ["/gates."],
    "int8-finest-fp32": ["/encoders.0/", "/decoders.3/", "/head/"],
}
TARGETS = {"speedup": 1.6, "iou_drop": 0.02, "attention_mad": 0.05}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def calibration_dir(work: Path, per_tile: int | None) -> Path:
    """The Dubai images (not their masks) linked in ``work``, one folder per tile.

    ``per_tile``: only that many images of Tiles 1, 2 and 8, for a quick run.
    """
    root = work / "calibration"
    tiles = sorted(p.name for p in DUBAI.iterdir() if (p / "images").is_dir())
    if per_tile is not None:
        tiles = ["Tile 1", "Tile 2", "Tile 8"]
    for tile in tiles:
        (root / tile).mkdir(parents=True)
        for image in sorted((DUBAI / tile / "images").glob("*.jpg"))[:per_tile]:
            (root / tile / image.name).symlink_to(image)
    return root


def held_out_pairs(root: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` of every held-out image (the split ``attnserve quantize`` makes)."""
    _, held = split_images(find_images(root), root)
    pairs = []
    for image in held:
        mask = DUBAI / image.parent.name / "masks" / (image.stem + ".png")
        pairs.append((image, mask))
    return pairs


def score(
    models: dict[str, Path], manifest: Manifest, pairs: list[tuple[Path, Path]]
) -> dict[str, Any]:
    """Each model against float32 and against the building masks, on 512 px centre crops."""
    options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=2)
    sessions = {name: ModelSession(path, options) for name, path in models.items()}
    outputs = [o.name for o in manifest.outputs]
    counts = {n: {"gt_i": 0, "gt_u": 0, "ref_i": 0, "ref_u": 0} for n in models}
    diffs: dict[str, dict[str, list[float]]] = {n: {o: [] for o in outputs} for n in models}
    for image_path, mask_path in pairs:
        image = read_crop(image_path, 3, TILE, 16)
        colours = read_crop(mask_path, 3, TILE, 16)
        truth = np.all(colours == np.array(BUILDING, np.float32)[:, None, None], axis=0)
        feed = image_feed(manifest, image[None])
        results = {n: s.run(feed) for n, s in sessions.items()}
        reference = results["fp32"]
        ref_mask = reference["probability"][0, 0] > 0.5
        for name, result in results.items():
            mask = result["probability"][0, 0] > 0.5
            c = counts[name]
            c["gt_i"] += int((mask & truth).sum())
            c["gt_u"] += int((mask | truth).sum())
            c["ref_i"] += int((mask & ref_mask).sum())
            c["ref_u"] += int((mask | ref_mask).sum())
            for o in outputs:
                diffs[name][o].append(float(np.abs(result[o] - reference[o]).mean()))
    scored: dict[str, Any] = {}
    for name, c in counts.items():
        scored[name] = {
            "pixel_iou_vs_masks": round(c["gt_i"] / max(c["gt_u"], 1), 4),
            "pixel_iou_vs_fp32": round(c["ref_i"] / max(c["ref_u"], 1), 4),
            "mean_abs_diff_vs_fp32": {
                o: round(float(np.mean(v)), 5) for o, v in diffs[name].items()
            },
        }
    return scored


def throughput(
    models: dict[str, Path],
    manifest: Manifest,
    tiles: np.ndarray,
    seconds: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """Tiles per second of each model in each configuration, models one after the other."""
    rows = []
    names = list(models)
    for label, threads, batch, count in CONFIGS:
        options = SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads)
        feed = image_feed(manifest, tiles[:batch])
        figures: dict[str, list[float]] = {n: [] for n in names}
        cpu_ms: dict[str, list[float]] = {n: [] for n in names}
        loads: list[float] = []
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                sessions = [ModelSession(models[name], options) for _ in range(count)]
                cpu = time.process_time()
                if count == 1:
                    result = measure(sessions[0], feed, 1, seconds, 3)
                    runs = result["runs"] + 1  # its warm-up run
                else:
                    result = measure_side_by_side(sessions, feed, 1, seconds)
                    runs = result["runs"] + count  # one warm-up run each
                # CPU time per tile, all threads: what neighbours on the cores disturb least.
                cpu_ms[name].append(round((time.process_time() - cpu) * 1000 / (runs * batch), 1))
                figures[name].append(result["throughput_per_s"])
                loads.append(load_average()[0])
                say(
                    f"{label}: {name} {result['throughput_per_s']:.2f} tiles/s, "
                    f"{cpu_ms[name][-1]} CPU ms/tile"
                )
        rows.append(
            {
                "config": label,
                "threads": threads,
                "batch": batch,
                "sessions": count,
                "tiles_per_s": {n: figures[n] for n in names},
                "median_tiles_per_s": {
                    n: round(statistics.median(v), 3) for n, v in figures.items()
                },
                "cpu_ms_per_tile": cpu_ms,
                "median_cpu_ms_per_tile": {n: statistics.median(v) for n, v in cpu_ms.items()},
                "load_1min": loads,
            }
        )
    return rows


def level_profile(
    models: dict[str, Path], feed: dict[str, np.ndarray], runs: int
) -> dict[str, Any]:
    """Milliseconds per tile of each U-Net level in each model: one thread, ONNX Runtime's profiler.

    Nodes are grouped by the module in their name (``/encoders.0/...``,
    ``/decoders.3/...``, ``/gates.3/...``); nodes outside a module or made by the
    optimiser (layout reorders, transposes, pooling, concatenation) by operator.
    """
    import onnxruntime as ort

    out: dict[str, Any] = {}
    for name, path in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.log_severity_level = 3
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "bench-quantize-profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        trace.unlink()
        levels: dict[str, float] = {}
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            node = event["name"].removesuffix("_kernel_time")
            parts = node.split("/")
            group = parts[1] if len(parts) > 2 else event["args"]["op_name"]
            levels[group] = levels.get(group, 0.0) + event["dur"] / 1000 / (runs + 1)
        out[name] = {k: round(v, 2) for k, v in sorted(levels.items(), key=lambda kv: -kv[1])}
    return out


def summary(scores: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Saturation of each model and each INT8 copy's figures against the targets."""
    saturation = {
        name: max(r["median_tiles_per_s"][name] for r in rows)
        for name in rows[0]["median_tiles_per_s"]
    }
    out: dict[str, Any] = {"saturation_tiles_per_s": saturation, "copies": {}}
    for name in saturation:
        if name == "fp32":
            continue
        s = scores[name]
        attention = {o: v for o, v in s["mean_abs_diff_vs_fp32"].items() if o.startswith("gate_")}
        iou_drop = scores["fp32"]["pixel_iou_vs_masks"] - s["pixel_iou_vs_masks"]
        speedup = saturation[name] / saturation["fp32"]
        out["copies"][name] = {
            "speedup_at_saturation": round(speedup, 3),
            "pixel_iou_vs_masks_drop": round(iou_drop, 4),
            "pixel_iou_vs_fp32": s["pixel_iou_vs_fp32"],
            "worst_attention_mad": max(attention.values()),
            "met": {
                "speedup": speedup >= TARGETS["speedup"],
                "iou_vs_masks": abs(iou_drop) <= TARGETS["iou_drop"],
                "iou_vs_fp32": s["pixel_iou_vs_fp32"] >= 1 - TARGETS["iou_drop"],
                "attention": max(attention.values()) <= TARGETS["attention_mad"],
            },
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results as the page committed beside them."""
    m = result["machine"]
    lines = report_head(
        "INT8 footprints on CPU",
        m,
        "Written by `python -m bench.quantize`; figures in `bench/quantize/results.json`. "
        "FP32 and both INT8 copies are timed in the same run, one after the other in each "
        "round, with the server's session options.",
    )
    lines += [
        f"- {m['gpu']}; numpy {m['numpy']}, attnserve git {m['attnserve_git']}",
        f"- load average (1, 5, 15 min) at start {result['load_start']}, at end "
        f"{result['load_end']}: the 2 cores are shared with other work, so every figure "
        "moves with it; the 1-minute load after each measurement is in the JSON",
        f"- started {result['started']}, {result['seconds']} s per measurement, "
        f"{result['rounds']} rounds",
        "",
        "## Copies",
        "",
        "- `int8`: `attnserve quantize models/shipped/footprints-2.2.0.onnx --calibration "
        "DIR --out ...`, DIR holding the Dubai images one folder per tile: every "
        "convolution (the upsamplings as Conv + DepthToSpace), the gates' products and "
        "sums in INT8 (static QDQ, uint8 activations, int8 weights per channel, min-max "
        "ranges)",
        "- `int8-gates-fp32`: the same with `--keep-float /gates.`: the four attention "
        "gates (their convolutions, sigmoid and product) kept in float32",
        "- `int8-finest-fp32`: the full-resolution level (first encoder block, last "
        "decoder block, head: 16-32 channels at 512 x 512) kept in float32, where INT8 "
        "convolutions of so few channels are slower than ONNX Runtime's float32 ones",
        f"- calibration: {result['calibration']['calibration_images']} images of "
        f"{result['calibration']['calibration_folders']}, 256 px centre crops; held out: "
        f"{len(result['held_out'])} images of {result['calibration']['holdout']}, "
        "512 px centre crops",
    ]
    names = list(result["scores"])
    copies = names[1:]
    lines += _section(
        "Targets",
        [
            "copy",
            "INT8 / FP32 at saturation (>= 1.6x)",
            "pixel IoU vs masks, drop (<= 0.02)",
            "pixel IoU vs FP32 (>= 0.98)",
            "worst gate mean abs diff (<= 0.05)",
        ],
        [_target_row(name, c) for name, c in result["summary"]["copies"].items()],
    )
    outputs = list(result["scores"]["fp32"]["mean_abs_diff_vs_fp32"])
    scores = result["scores"]
    lines += _section(
        "Accuracy on held-out tiles",
        ["model", "pixel IoU vs masks", "pixel IoU vs FP32"]
        + [f"{o} mean abs diff" for o in outputs],
        [
            [n, f"{scores[n]['pixel_iou_vs_masks']:.4f}", f"{scores[n]['pixel_iou_vs_fp32']:.4f}"]
            + [f"{scores[n]['mean_abs_diff_vs_fp32'][o]:.4f}" for o in outputs]
            for n in names
        ],
    )
    rows = result["throughput"]
    lines += _section(
        "Throughput (512 px tiles of the held-out images, tiles/s, median of rounds)",
        ["configuration", *names, *(f"{n} / fp32" for n in copies), "each round"],
        [
            [r["config"]]
            + [f"{r['median_tiles_per_s'][n]:.2f}" for n in names]
            + [
                f"{r['median_tiles_per_s'][n] / r['median_tiles_per_s']['fp32']:.2f}x"
                for n in copies
            ]
            + [
                "; ".join(
                    f"{n} " + ", ".join(f"{v:.2f}" for v in r["tiles_per_s"][n]) for n in names
                )
            ]
            for r in rows
        ],
    )
    lines += _section(
        "CPU time per tile (ms, all threads, median of rounds)",
        ["configuration", *names, *(f"fp32 / {n}" for n in copies)],
        [
            [r["config"]]
            + [f"{r['median_cpu_ms_per_tile'][n]:.1f}" for n in names]
            + [
                f"{r['median_cpu_ms_per_tile']['fp32'] / r['median_cpu_ms_per_tile'][n]:.2f}x"
                for n in copies
            ]
            for r in rows
        ],
        "Less disturbed by the neighbours than tiles/s: a busy core slows a run's "
        "wall time far more than the CPU time it spends.",
    )
    profile = result["level_profile_ms"]
    groups = sorted(
        {g for levels in profile.values() for g in levels},
        key=lambda g: (-profile["fp32"].get(g, 0), -max(p.get(g, 0) for p in profile.values()), g),
    )
    lines += _section(
        "Where the time goes (ms per 512 px tile, one thread, ONNX Runtime's profiler)",
        ["level", *names],
        [[g] + [f"{profile[n].get(g, 0):.1f}" for n in names] for g in groups]
        + [["**total**"] + [f"**{sum(profile[n].values()):.1f}**" for n in names]],
        "Modules by node name; nodes outside a module or made by the optimiser (layout "
        "reorders, transposes, pooling, concatenation) by operator. `encoders.0`, "
        "`decoders.3`, `gates.3` and `head` run at full resolution with 16-32 channels.",
    )
    sat = result["summary"]["saturation_tiles_per_s"]
    lines += [
        "",
        "Saturation (best configuration): "
        + ", ".join(f"{n} {v:.2f} tiles/s" for n, v in sat.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def _target_row(name: str, c: dict[str, Any]) -> list[str]:
    met = c["met"]

    def mark(ok: bool, text: str) -> str:
        return text if ok else f"**{text} (missed)**"

    return [
        name,
        mark(met["speedup"], f"{c['speedup_at_saturation']:.2f}x"),
        mark(met["iou_vs_masks"], f"{c['pixel_iou_vs_masks_drop']:+.4f}"),
        mark(met["iou_vs_fp32"], f"{c['pixel_iou_vs_fp32']:.4f}"),
        mark(met["attention"], f"{c['worst_attention_mad']:.4f}"),
    ]


def _section(title: str, header: list[str], rows: list[list[str]], note: str = "") -> list[str]:
    """A ``##`` section holding one Markdown table, with an optional note above it."""
    lines = ["", f"## {title}", ""] + ([note, ""] if note else [])
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        work = Path(tmp)
        root = calibration_dir(work, args.per_tile)
        say(f"quantising {SOURCE.name} on {root}")
        copies: dict[str, Path] = {"fp32": SOURCE}
        records = {}
        for name, keep in VARIANTS.items():
            t = time.perf_counter()
            manifest = quantize_model(SOURCE, work / f"{name}.onnx", root, keep_float=keep)
            records[name] = {**manifest.quantization, "seconds": round(time.perf_counter() - t, 1)}
            copies[name] = work / f"{name}.onnx"
            say(f"{name}: {records[name]['seconds']} s")
        source = ModelSession(SOURCE, SessionOptions(providers=("CPUExecutionProvider",)))
        pairs = held_out_pairs(root)
        say(f"scoring on {len(pairs)} held-out images")
        scores = score(copies, source.manifest, pairs)
        tiles = np.stack([read_crop(image, 3, TILE, 16) for image, _ in pairs[:4]])
        if tiles.shape[0] < 4:
            tiles = np.concatenate([tiles] * 4)[:4]
        rows = throughput(copies, source.manifest, tiles, args.seconds, args.rounds)
        say("profiling each level, one thread")
        profile = level_profile(copies, image_feed(source.manifest, tiles[:1]), args.profile_runs)
        held_out = [str(image.relative_to(root)) for image, _ in pairs]
        first = records["int8"]
        calibration_folders = sorted(
            {str(p.parent.relative_to(root)) for p in find_images(root)} - set(first["holdout"])
        )
    return {
        "machine": machine(),
        "started": started,
        "load_start": load_start,
        "load_end": load_average(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "calibration": {
            "calibration_images": first["calibration_images"],
            "calibration_folders": ", ".join(calibration_folders),
            "holdout": ", ".join(first["holdout"]),
        },
        "quantization": records,
        "held_out": held_out,
        "scores": scores,
        "throughput": rows,
        "level_profile_ms": profile,
        "summary": summary(scores, rows),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.quantize", description=__doc__.splitlines()[0]
    )
    p.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the models")
    p.add_argument("--profile-runs", type=int, default=6, help="runs profiled per model")
    p.add_argument(
        "--per-tile", type=int, default=None, help="quick run: this many images of 3 tiles"
    )
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where results.json/md go")
    args = p.parse_args(argv)
    result = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "results.md").write_text(markdown(result))
    say(f"wrote {args.out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
