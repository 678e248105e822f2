"""A lightweight temporal attention encoder (L-TAE) crop classifier.

After Garnot & Landrieu, "Lightweight Temporal Self-Attention for Classifying
Satellite Image Time Series" (2020): a shared per-date spectral encoder, a
sinusoidal positional encoding of the acquisition *day* (not the position in the
sequence, so irregular and missing dates keep their meaning), and multi-head
attention with one learned query per head. Keys come from a linear layer on the
encoded dates; values are the encoded dates split across heads, so each head
pools its own slice of the features. Dates marked invalid get no weight.

The graph normalises raw reflectance itself (per-band mean/std buffers), so the
ONNX model takes the raw values a user has.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.data.crops import BANDS
from models.registry import ModelFamily
from service.runtime.manifest import (
    InputSpec,
    Manifest,
    Normalization,
    OutputSpec,
    TensorSpec,
)

# Longest series a manifest promises: a daily series over a leap year.
MAX_DATES = 366
# Period scale of the positional encoding, in days (as in L-TAE).
PE_PERIOD = 1000.0
# Score given to invalid dates before the softmax: exp() of it underflows to
# exactly 0 in float32, unlike -inf it cannot make a NaN when no date is valid.
_MASKED_SCORE = -1.0e9

DEFAULT_CONFIG: dict[str, Any] = {
    "bands": list(BANDS),
    "class_names": [],
    "d_model": 64,
    "heads": 8,
    "d_k": 8,
    "hidden": 64,
    "band_mean": [0.0] * len(BANDS),
    "band_std": [1.0] * len(BANDS),
    # Checkpoints from before the trainer described inputs by their data were
    # all Sentinel-2 reflectance x 10000.
    "value_range": [0.0, 10000.0],
    "accepted_dtypes": ["uint16", "int16", "int32", "float32", "float64"],
    "units": "surface reflectance x 10000",
}


def day_encoding(days: torch.Tensor, dim: int, period: float = PE_PERIOD) -> torch.Tensor:
    """Sinusoidal encoding of acquisition days.

    Args:
        days: ``(B, T) float32`` day of year.
        dim: encoding size (even).
        period: longest wavelength scale, in days.

    Returns:
        ``(B, T, dim) float32``: sines in the first half, cosines in the second.
    """
    half = dim // 2
    freq = period ** (-torch.arange(half, dtype=torch.float32, device=days.device) / half)
    angle = days.unsqueeze(-1) * freq
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class LTAEClassifier(nn.Module):
    """L-TAE crop classifier over raw time series of any band set.

    Args:
        n_classes: number of classes ``K``.
        band_mean: per-band mean of raw inputs, ``C`` values.
        band_std: per-band standard deviation of raw inputs, ``C`` values.
        d_model: width of the encoded dates; split across heads for the values.
        heads: number of attention heads, each with one learned query.
        d_k: key/query size per head.
        hidden: width of the classification head's hidden layer.
    """

    band_mean: torch.Tensor
    band_std: torch.Tensor

    def __init__(
        self,
        n_classes: int,
        band_mean: list[float],
        band_std: list[float],
        *,
        d_model: int = 64,
        heads: int = 8,
        d_k: int = 8,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if d_model % heads or d_model % 2:
            raise ValueError(f"d_model {d_model} must be even and divisible by heads {heads}")
        if len(band_mean) != len(band_std):
            raise ValueError("band_mean and band_std need one value per band")
        channels = len(band_mean)
        self.heads, self.d_k, self.d_model = heads, d_k, d_model
        self.register_buffer("band_mean", torch.tensor(band_mean, dtype=torch.float32))
        self.register_buffer("band_std", torch.tensor(band_std, dtype=torch.float32))
        self.encoder = nn.Sequential(
            nn.Linear(channels, d_model),
            nn.LayerNorm(d_model),
            nn.ReLU(),
            nn.Linear(d_model, d_model),
            nn.LayerNorm(d_model),
        )
        self.keys = nn.Linear(d_model, heads * d_k)
        self.query = nn.Parameter(torch.randn(heads, d_k) * d_k**-0.5)
        self.head = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def logits(
        self, series: torch.Tensor, days: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(B, K)`` and attention ``(B, heads, T)``; see ``forward``."""
        B, T = series.shape[0], series.shape[1]
        x = (series - self.band_mean) / self.band_std
        encoded = self.encoder(x) + day_encoding(days, self.d_model)  # (B, T, D)
        # Invalid dates may hold anything (NaN nodata included); zeroing them here
        # keeps 0 attention x NaN from turning the pooled features into NaN.
        encoded = torch.where(valid.unsqueeze(-1), encoded, torch.zeros_like(encoded))
        keys = self.keys(encoded).view(B, T, self.heads, self.d_k)
        scores = torch.einsum("bthk,hk->bht", keys, self.query) / math.sqrt(self.d_k)
        mask = valid.unsqueeze(1)  # (B, 1, T)
        scores = scores.masked_fill(~mask, _MASKED_SCORE)
        # Multiplying by the mask only matters when no date is valid: the softmax
        # is then uniform, and the product makes it 0 instead.
        attention = torch.softmax(scores, dim=-1) * mask.to(scores.dtype)  # (B, H, T)
        values = encoded.view(B, T, self.heads, self.d_model // self.heads)
        pooled = torch.einsum("bht,bthv->bhv", attention, values).reshape(B, self.d_model)
        return self.head(pooled), attention

    def forward(
        self, series: torch.Tensor, days: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify parcels and return the attention behind each answer.

        Args:
            series: ``(B, T, C) float32`` raw values (e.g. reflectance x 10000).
            days: ``(B, T) float32`` acquisition day of year.
            valid: ``(B, T) bool``, False for dates to ignore (padding, clouds);
                their series and days values, even NaN, do not affect the outputs.

        Returns:
            ``probabilities`` ``(B, K) float32`` summing to 1, and ``attention``
            ``(B, heads, T) float32``: per head, sums to 1 over valid dates and is
            0 on invalid ones. With no valid date, attention is all 0 and the
            probabilities are those of an empty series (finite).
        """
        logits, attention = self.logits(series, days, valid)
        return torch.softmax(logits, dim=-1), attention


def build(config: dict[str, Any]) -> LTAEClassifier:
    """The classifier described by a checkpoint's ``config``."""
    cfg = {**DEFAULT_CONFIG, **config}
    return LTAEClassifier(
        n_classes=len(cfg["class_names"]),
        band_mean=list(cfg["band_mean"]),
        band_std=list(cfg["band_std"]),
        d_model=int(cfg["d_model"]),
        heads=int(cfg["heads"]),
        d_k=int(cfg["d_k"]),
        hidden=int(cfg["hidden"]),
    )


def example_inputs(config: dict[str, Any], batch: int) -> tuple[torch.Tensor, ...]:
    """Seeded example ``(series, days, valid)`` for tracing, with some invalid dates."""
    T, C = 7, len(config.get("bands", BANDS))
    gen = torch.Generator().manual_seed(0)
    series = torch.rand(batch, T, C, generator=gen) * 5000
    days = torch.sort(torch.rand(batch, T, generator=gen) * 365, dim=1).values
    valid = torch.ones(batch, T, dtype=torch.bool)
    valid[:, -2:] = False
    return series, days, valid


def manifest(ckpt: dict[str, Any]) -> Manifest:
    """The manifest of a crops checkpoint."""
    cfg = {**DEFAULT_CONFIG, **ckpt["config"]}
    classes = [str(c) for c in cfg["class_names"]]
    bands = [str(b) for b in cfg["bands"]]
    sensor = "Sentinel-2 " if tuple(bands) == BANDS else ""
    return Manifest(
        name=str(cfg.get("name", "crops")),
        version=str(cfg.get("version", "1.0.0")),
        task="temporal_classification",
        description=(
            f"L-TAE crop type classifier for {sensor}parcel time series of "
            f"{len(bands)} band(s) ({', '.join(bands)}): one learned query per head "
            "attends over acquisition dates encoded by day of year; invalid (masked) "
            "dates get no weight."
        ),
        input=InputSpec(
            bands=bands,
            accepted_dtypes=[str(d) for d in cfg["accepted_dtypes"]],
            value_range=[float(v) for v in cfg["value_range"]],
            units=str(cfg["units"]),
            normalization=Normalization(
                mean=[float(v) for v in cfg["band_mean"]],
                std=[float(v) for v in cfg["band_std"]],
                applied="in_graph",
            ),
            min_dates=1,
            max_dates=MAX_DATES,
            day_unit="day_of_year",
        ),
        tensors=[
            TensorSpec(
                "series",
                "float32",
                ["batch", "dates", len(bands)],
                f"raw values per date and band ({cfg['units']})",
            ),
            TensorSpec(
                "days",
                "float32",
                ["batch", "dates"],
                "acquisition day: days since 1 January of the series' first year",
            ),
            TensorSpec("valid", "bool", ["batch", "dates"], "False for dates to ignore"),
        ],
        outputs=[
            OutputSpec(
                "probabilities",
                "prediction",
                "class_probabilities",
                ["batch", len(classes)],
                description="class probabilities, summing to 1",
            ),
            OutputSpec(
                "attention",
                "attention",
                "temporal",
                ["batch", int(cfg["heads"]), "dates"],
                description="per-head date weights: sum to 1 over valid dates, 0 elsewhere",
            ),
        ],
        classes=classes,
        training=dict(ckpt.get("training", {})),
        metrics={k: float(v) for k, v in ckpt.get("metrics", {}).items()},
    )


FAMILY = ModelFamily(
    name="crops",
    build=build,
    example_inputs=example_inputs,
    input_names=("series", "days", "valid"),
    output_names=("probabilities", "attention"),
    dynamic_axes={
        "series": {0: "batch", 1: "dates"},
        "days": {0: "batch", 1: "dates"},
        "valid": {0: "batch", 1: "dates"},
        "probabilities": {0: "batch"},
        "attention": {0: "batch", 2: "dates"},
    },
    manifest=manifest,
)
