"""Footprints training data from the command line: real images, splits, band spec."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm import tqdm

from models.data.footprint_sources import (
    LabelledImage,
    load_pair,
    pair_folder,
    split_groups,
)
from models.data.rasters import MaskRule, RasterDataError, parse_colour

# Fraction of a single real image's rows (at the bottom) kept out of training.
HOLDOUT_FRACTION = 0.2
BAND_NAMES = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "nir")}


def mask_rule(args: argparse.Namespace) -> MaskRule:
    if args.mask_color is not None and args.mask_value is not None:
        raise SystemExit("give --mask-value or --mask-color, not both")
    if args.mask_color is not None:
        return MaskRule(color=parse_colour(args.mask_color))
    if args.mask_value is not None:
        return MaskRule(value=args.mask_value)
    raise SystemExit("mask rasters need --mask-value (one-band masks) or --mask-color (RGB)")


def aux_rules(args: argparse.Namespace) -> list[tuple[str, MaskRule]]:
    """``(name, rule)`` of each ``--aux-class NAME=COLOUR`` (or ``NAME=VALUE``)."""
    out: list[tuple[str, MaskRule]] = []
    for text in args.aux_class:
        name, _, spec = text.rpartition("=")
        name, spec = (name or spec).strip(), spec.strip()
        try:
            if args.mask_color is not None:
                rule = MaskRule(color=parse_colour(spec))
            elif args.mask_value is not None:
                rule = MaskRule(value=float(spec))
            else:
                raise SystemExit("--aux-class needs mask rasters (--mask-value or --mask-color)")
        except (RasterDataError, ValueError) as exc:
            raise SystemExit(f"--aux-class {text!r}: {exc}") from exc
        if rule == mask_rule(args):
            raise SystemExit(f"--aux-class {text!r} is the building class itself")
        out.append((name, rule))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or len(names) > 200:
        raise SystemExit("--aux-class names must differ (and be at most 200)")
    return out


def real_images(args: argparse.Namespace) -> list[LabelledImage]:
    """Every labelled real image the arguments name (none for synthetic runs)."""
    items: list[LabelledImage] = []
    others = [rule for _, rule in aux_rules(args)]
    if others and (args.labels is not None or (args.mask is None and not args.data)):
        raise SystemExit("--aux-class reads the classes of mask rasters (--mask or --data)")
    if args.image is not None:
        if (args.labels is None) == (args.mask is None):
            raise SystemExit("--image goes with either --labels (GeoJSON) or --mask (raster)")
        if args.labels is not None:
            from models.data.footprint_labels import read_footprints

            image, mask = read_footprints(args.image, args.labels, bands=3)
            items.append(LabelledImage(image, mask, args.image.stem, args.image.stem))
        else:
            items.append(load_pair(args.image, args.mask, mask_rule(args), args.image.stem, others))
    elif args.labels is not None or args.mask is not None:
        raise SystemExit("--labels and --mask need --image")
    if args.data:
        rule = mask_rule(args)
        for folder in args.data:
            pairs = pair_folder(folder)
            for image, mask, group in tqdm(pairs, desc=f"read {folder.name}", leave=False):
                items.append(load_pair(image, mask, rule, group, others))
    return items


def split(
    args: argparse.Namespace, items: list[LabelledImage], negatives: list[LabelledImage]
) -> tuple[list[LabelledImage], list[LabelledImage], str]:
    """(train, held-out, description) by whole groups; one image: its bottom rows."""
    groups = {i.group for i in items}
    if len(groups) == 1 and args.holdout is None and len(items) > 1:
        # One group of several images: its last image, whole, in name order.
        *rest, last = sorted(items, key=lambda i: i.name)
        info = f"the whole image {last.name} of the only group, {last.group}"
        return [*rest, *negatives], [last], info
    if len(groups) == 1 and args.holdout is None:
        (item,) = items
        split = int(item.image.shape[1] * (1.0 - HOLDOUT_FRACTION))
        classes = item.classes
        top = replace(
            item,
            image=item.image[:, :split],
            mask=item.mask[:split],
            classes=None if classes is None else classes[:split],
        )
        bottom = replace(
            item,
            image=item.image[:, split:],
            mask=item.mask[split:],
            classes=None if classes is None else classes[split:],
            name=item.name + " (bottom)",
        )
        info = f"the bottom {item.image.shape[1] - split} rows of {item.name}"
        return [top, *negatives], [bottom], info
    train, held = split_groups([*items, *negatives], args.holdout)
    names = sorted({i.group for i in held})
    return train, held, "whole groups " + ", ".join(names) if names else "nothing"


def data_spec(args: argparse.Namespace, items: Sequence[LabelledImage]) -> dict[str, Any]:
    """Bands, dtype, value range and normalisation of the data, for the model and manifest."""
    if not items:
        return {
            "bands": list(BAND_NAMES[3]),
            "dtype": "uint8",
            "value_range": [0.0, 255.0],
            "gsd_m": args.gsd,
        }
    counts = {i.image.shape[0] for i in items}
    dtypes = {str(i.image.dtype) for i in items}
    if len(counts) > 1 or len(dtypes) > 1:
        raise SystemExit(f"images differ in band count {sorted(counts)} or dtype {sorted(dtypes)}")
    (c,), (dtype,) = counts, dtypes
    if args.value_range is not None:
        value_range = [float(v) for v in args.value_range]
    elif dtype == "uint8":
        value_range = [0.0, 255.0]
    else:
        raise SystemExit(f"{dtype} imagery needs --value-range 'LO HI' (e.g. '0 10000')")
    names = (
        [b.strip() for b in args.band_names.split(",")]
        if args.band_names
        else list(BAND_NAMES.get(c, [f"band_{k}" for k in range(1, c + 1)]))
    )
    if len(names) != c:
        raise SystemExit(f"--band-names gives {len(names)} names for {c} bands")
    # Normalisation from a strided sample of every pixel of the training images.
    sample = np.concatenate([i.image[:, ::4, ::4].reshape(c, -1) for i in items], axis=1)
    sample = sample.astype(np.float64)
    gsds = {i.gsd_m for i in items if not i.negative}
    gsd = args.gsd if args.gsd is not None else (gsds.pop() if len(gsds) == 1 else None)
    return {
        "bands": names,
        "dtype": dtype,
        "value_range": value_range,
        "mean": [round(float(m), 3) for m in sample.mean(axis=1)],
        "std": [round(max(float(s), 1e-3), 3) for s in sample.std(axis=1)],
        "gsd_m": gsd,
    }
