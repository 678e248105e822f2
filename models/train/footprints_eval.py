"""Score a footprints model on whole held-out images: IoU, F1, gates, negatives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.attention_unet import AttentionUNet
from models.data.footprint_sources import LabelledImage
from models.data.model_grid import grid_factor, predict_on_model_grid
from models.metrics import GateContrast, footprint_scores, gate_contrast


def predict_image(model: AttentionUNet, image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probability and gates of one whole image, as the server would run it.

    The image is padded by reflection to a multiple of ``2**depth`` and its own
    band means feed the band attention.

    Args:
        model: the network (switched to eval mode here).
        image: ``(C, H, W)`` raw values.

    Returns:
        ``(probability, gates)``: ``(H, W)`` float32 and, finest first, each
        gate ``(ceil(H / s), ceil(W / s))`` for its stride ``s``.
    """
    model.eval()
    _, h, w = image.shape
    m = model.size_multiple
    ph, pw = (-h) % m, (-w) % m
    x = torch.from_numpy(image.astype(np.float32))[None]
    band_mean = x.mean(dim=(2, 3))
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    with torch.no_grad():
        logits, gates, _ = model.forward_logits(x, band_mean)
    prob = torch.sigmoid(logits)[0, 0, :h, :w].numpy()
    out = []
    for level, g in enumerate(gates, start=1):
        s = 2 ** (level - 1)
        out.append(g[0, 0, : -(-h // s), : -(-w // s)].numpy())
    return prob, out


def _crop_to_stride(mask: np.ndarray, gate: np.ndarray, stride: int) -> tuple[np.ndarray, ...]:
    """The mask and gate cut to whole gate cells (the padded fringe is not scored)."""
    gh, gw = mask.shape[0] // stride, mask.shape[1] // stride
    return mask[: gh * stride, : gw * stride], gate[:gh, :gw]


def evaluate(
    model: AttentionUNet,
    held_out: Sequence[LabelledImage],
    model_gsd_m: float | None = None,
    data_gsd_m: float | None = None,
) -> dict[str, float]:
    """Held-out scores of ``model``.

    Images whose ground resolution (their own, else ``data_gsd_m`` for labelled
    ones) differs from the model's ``model_gsd_m`` run on the model's grid and
    are scored on their own, as the server answers them.

    Returns:
        For images with buildings: ``pixel_iou``, ``building_f1``, ``precision``,
        ``recall``, building counts and ``gate_k_ratio`` (mean gate inside
        buildings / outside, per level). For negatives: the largest share of
        pixels predicted as building, ``negative_building_fraction``.
    """
    preds, truths = [], []
    contrasts: list[GateContrast] = []
    negative_fractions = []
    for item in held_out:
        gsd = item.gsd_m or (None if item.negative else data_gsd_m)
        factor = grid_factor(gsd, model_gsd_m)
        prob, gates = predict_on_model_grid(
            lambda image: predict_image(model, image), item.image, factor
        )
        pred = prob >= 0.5
        if item.negative:
            negative_fractions.append(float(pred.mean()))
            continue
        preds.append(pred)
        truths.append(item.mask.astype(bool))
        if not contrasts:
            contrasts = [GateContrast() for _ in gates]
        for level, gate in enumerate(gates, start=1):
            m, g = _crop_to_stride(item.mask, gate, 2 ** (level - 1))
            contrasts[level - 1] = contrasts[level - 1] + gate_contrast(g, m)
    metrics: dict[str, float] = {}
    if preds:
        metrics.update(footprint_scores(preds, truths))
        for level, c in enumerate(contrasts, start=1):
            if not np.isnan(c.ratio):
                metrics[f"gate_{level}_ratio"] = c.ratio
    if negative_fractions:
        metrics["negative_building_fraction"] = max(negative_fractions)
    return metrics
