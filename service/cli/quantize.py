"""``attnserve quantize``: a statically quantised INT8 copy of an image model, for CPU nodes."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli.base import Commands, fail


def add_parser(sub: Commands) -> None:
    """Declare ``quantize``."""
    p = sub.add_parser(
        "quantize",
        help="write an INT8 copy of a segmentation model calibrated on real images (CPU nodes)",
    )
    p.add_argument("model", type=Path, help="float32 ONNX model with a manifest")
    p.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="directory of images (TIFF, JPEG, PNG; sub-folders read) like those to be served",
    )
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        help="share of the sub-folders (or images, in a flat folder) held out from calibration "
        "to measure what the copy lost (default 0.25)",
    )
    p.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="PATTERN",
        help="keep nodes whose name or operator type contains PATTERN in float32 "
        "(e.g. /gates. for the footprints attention gates); repeatable",
    )
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    try:
        from models.quantize import quantize_model
    except ImportError as exc:
        return fail(f"quantize needs the onnx package ({exc}); install onnx", 2)
    try:
        manifest = quantize_model(
            args.model,
            args.out,
            args.calibration,
            holdout_fraction=args.holdout,
            keep_float=args.keep_float,
        )
    except (OSError, ValueError) as exc:
        return fail(f"quantize: {exc}", 1)
    q = manifest.quantization
    diffs = ", ".join(f"{name} {value:.4f}" for name, value in q["mean_abs_diff"].items())
    print(f"wrote {args.out} ({manifest.ref}, int8)")
    print(
        f"calibrated on {q['calibration_images']} images; on {q['holdout_images']} held out: "
        f"pixel IoU vs float32 {q['pixel_iou_vs_float32']:.4f}, mean |diff| {diffs}"
    )
    return 0
