"""Attention U-Net for building footprints (Oktay et al., 2018, arXiv:1804.03999).

A U-Net whose every skip connection passes through an additive attention gate,
plus a squeeze-and-excitation weighting of the input bands. The model returns
its prediction together with the attention behind it:

* ``probability`` ``(B, 1, H, W)``: building probability per pixel.
* ``gate_1`` .. ``gate_N``: the gate coefficients alpha of each skip
  connection at the resolution they are computed at, ``gate_k`` being
  ``(B, 1, H / 2**(k-1), W / 2**(k-1))``. ``gate_1`` is the finest level (full
  resolution skip), ``gate_N`` the coarsest; ``N`` is the model's depth. The
  manifest gives each its ``stride``; the server stores them this small and
  upsamples them bilinearly to the input's grid when it serves them.
* ``band_weights`` ``(B, C)``: the channel attention weight of each input band.

Inputs are raw values, ``(B, C, H, W)`` float32 in 0..255; normalisation is part
of the graph. ``H`` and ``W`` must be multiples of ``2**depth`` (the server pads
tiles to such sizes); the model refuses other sizes with a ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ModelFamily
from service.runtime.manifest import (
    InputSpec,
    Manifest,
    Normalization,
    OutputSpec,
    TensorSpec,
)

# Per-band mean and standard deviation of 8-bit RGB imagery, in digital numbers.
DEFAULT_MEAN = (123.7, 116.3, 103.5)
DEFAULT_STD = (58.4, 57.1, 57.4)
DEFAULT_BANDS = ("red", "green", "blue")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ContextBlock(nn.Module):
    """A residual 3x3 conv + batch norm + ReLU with dilation ``dilation``.

    Stacked after the bottleneck, each widens the field of view by
    ``2 * dilation`` bottleneck cells at little cost: the bottleneck is the
    smallest map of the network.
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.norm(self.conv(x)))


class BandAttention(nn.Module):
    """Squeeze-and-excitation over the input bands.

    With only a handful of bands a reduction would leave a one-unit bottleneck,
    so the hidden layer is at least ``min_hidden`` wide.
    """

    def __init__(self, channels: int, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(channels, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(
        self, x: torch.Tensor, squeezed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight the bands of ``x``.

        Args:
            x: ``(B, C, H, W)`` float32, normalised.
            squeezed: ``(B, C)`` normalised band means to squeeze from instead
                of ``x``'s own: the whole scene's, so that every tile of a scene
                gets the same band weights as the scene would as one image.

        Returns:
            ``(x * w, w)``: the weighted input ``(B, C, H, W)`` and the band
            weights ``w`` ``(B, C)`` in ``[0, 1]``.
        """
        if squeezed is None:
            squeezed = x.mean(dim=(2, 3))
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return x * w[:, :, None, None], w


class AttentionGate(nn.Module):
    """Additive attention gate: ``alpha = sigmoid(psi^T ReLU(W_x x + W_g g + b))``.

    The gating signal ``g`` is the decoder feature already upsampled to the skip
    connection's resolution, so no resampling happens inside the gate.
    """

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_x = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.w_g = nn.Conv2d(g_channels, inter_channels, 1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate the skip features ``x`` by the decoder signal ``g``.

        Args:
            x: skip features ``(B, Cx, h, w)``.
            g: gating signal ``(B, Cg, h, w)``.

        Returns:
            ``(x * alpha, alpha)`` with ``alpha`` ``(B, 1, h, w)`` in ``[0, 1]``.
        """
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha, alpha


class AttentionUNet(nn.Module):
    """Attention U-Net with gated skips and band attention.

    Args:
        in_channels: number of input bands ``C``.
        width: channels of the finest level; each coarser level doubles it.
        depth: number of downsamplings; also the number of gated skips.
        context: dilated residual blocks after the bottleneck (dilations 2, 4,
            8...), for context beyond the encoder's field of view; 0: none.
        mean: per-band mean of raw input values, applied in the graph.
        std: per-band standard deviation of raw input values.
        aux_classes: other classes of the training masks (land, road...)
            segmented by a second head, for training only: ``K`` classes get
            ``K + 1`` logits (0: none of them). The exported graph leaves it out.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 4,
        context: int = 0,
        mean: tuple[float, ...] = DEFAULT_MEAN,
        std: tuple[float, ...] = DEFAULT_STD,
        aux_classes: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if context < 0:
            raise ValueError(f"context must be 0 or more, got {context}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError("mean and std need one value per input band")
        self.in_channels = in_channels
        self.depth = depth
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.band_attention = BandAttention(in_channels)
        widths = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(_conv_block(cin, w))
            cin = w
        self.bottleneck = _conv_block(widths[-2], widths[-1])
        self.context = nn.Sequential(
            *(ContextBlock(widths[-1], 2 ** (i + 1)) for i in range(context))
        )
        # Decoder modules are listed from the coarsest level to the finest.
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            w = widths[level]
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], w, 2, stride=2))
            self.gates.append(AttentionGate(w, w, max(w // 2, 4)))
            self.decoders.append(_conv_block(2 * w, w))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.aux_head = nn.Conv2d(widths[0], aux_classes + 1, 1) if aux_classes else None

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2**depth``)."""
        return int(2**self.depth)

    def _check_size(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"input height and width must be multiples of {m} (2**depth), got {h}x{w}; "
                "pad the tile first"
            )

    def forward_logits(
        self, x: torch.Tensor, band_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The forward pass before the output sigmoid (training uses the logits).

        Args:
            x: raw values ``(B, C, H, W)`` float32 in 0..255.
            band_mean: raw per-band means ``(B, C)`` of the whole image the
                tile ``x`` comes from (its valid pixels); None: ``x``'s own.

        Returns:
            ``(logits, gates, band_weights)``: logits ``(B, 1, H, W)``; gates
            finest first, each ``(B, 1, H, W)`` in ``[0, 1]``; band weights ``(B, C)``.

        Raises:
            ValueError: the input is not ``(B, C, H, W)`` with ``H`` and ``W``
                multiples of ``2**depth``.
        """
        h, gates, band_weights = self._decode(x, band_mean)
        return self.head(h), gates, band_weights

    def forward_train(
        self, x: torch.Tensor, band_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """:meth:`forward_logits` plus the auxiliary head's class logits.

        Returns:
            ``(logits, gates, aux_logits)``; ``aux_logits`` ``(B, K + 1, H, W)``,
            or None for a model without an auxiliary head.
        """
        h, gates, _ = self._decode(x, band_mean)
        aux = None if self.aux_head is None else self.aux_head(h)
        return self.head(h), gates, aux

    def _decode(
        self, x: torch.Tensor, band_mean: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The finest decoder features, the gates (finest first) and band weights."""
        # Shapes are symbolic while exporting; the server checks sizes itself.
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self._check_size(x)
        h = (x - self.mean) / self.std
        squeezed = None
        if band_mean is not None:
            squeezed = (band_mean - self.mean[:, :, 0, 0]) / self.std[:, :, 0, 0]
        h, band_weights = self.band_attention(h, squeezed)
        skips = []
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.context(self.bottleneck(h))
        gates: list[torch.Tensor] = []
        for up, gate, dec, skip in zip(
            self.ups, self.gates, self.decoders, reversed(skips), strict=True
        ):
            h = up(h)
            gated, alpha = gate(skip, h)
            h = dec(torch.cat([gated, h], dim=1))
            gates.append(alpha)
        gates.reverse()  # finest first
        return h, gates, band_weights

    def forward(
        self, x: torch.Tensor, band_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Predict building probability with the attention behind it.

        Args:
            x: raw values ``(B, C, H, W)`` float32 in 0..255, ``H`` and ``W``
                multiples of ``2**depth``.
            band_mean: raw per-band means ``(B, C)`` of the whole image (see
                :meth:`forward_logits`); the exported graph requires it.

        Returns:
            ``(probability, gate_1, ..., gate_N, band_weights)``: probability
            ``(B, 1, H, W)``, each ``gate_k`` ``(B, 1, H / 2**(k-1), W / 2**(k-1))``
            (``gate_1`` finest) and band weights ``(B, C)``, all float32 in
            ``[0, 1]``.
        """
        logits, gates, band_weights = self.forward_logits(x, band_mean)
        return (torch.sigmoid(logits), *gates, band_weights)


def _bands(config: dict[str, Any]) -> list[str]:
    return [str(b) for b in config.get("bands", DEFAULT_BANDS)]


def build(config: dict[str, Any]) -> AttentionUNet:
    """The model a checkpoint config describes.

    Keys: ``bands``, ``width``, ``depth``, ``context``, ``mean``, ``std`` and
    ``aux_classes`` (names of the auxiliary head's classes).
    """
    bands = _bands(config)
    return AttentionUNet(
        in_channels=len(bands),
        width=int(config.get("width", 16)),
        depth=int(config.get("depth", 4)),
        context=int(config.get("context", 0)),
        mean=tuple(float(m) for m in config.get("mean", DEFAULT_MEAN)),
        std=tuple(float(s) for s in config.get("std", DEFAULT_STD)),
        aux_classes=len(config.get("aux_classes", ())),
    )


def example_inputs(config: dict[str, Any], batch: int) -> tuple[torch.Tensor, ...]:
    """A raw-value input ``(batch, C, S, S)`` float32 for tracing; ``S = 4 * 2**depth``."""
    side = 4 * 2 ** int(config.get("depth", 4))
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(batch, len(_bands(config)), side, side, generator=gen) * 255.0
    return image, image.mean(dim=(2, 3))


def output_names(depth: int) -> tuple[str, ...]:
    """ONNX output names: ``probability``, ``gate_1`` .. ``gate_depth``, ``band_weights``."""
    return ("probability", *(f"gate_{i}" for i in range(1, depth + 1)), "band_weights")


def manifest(ckpt: dict[str, Any]) -> Manifest:
    """The manifest of a footprints checkpoint (``config``, ``training``, ``metrics``)."""
    config: dict[str, Any] = ckpt["config"]
    bands = _bands(config)
    depth = int(config.get("depth", 4))
    c = len(bands)
    spatial: list[int | str] = ["batch", 1, "height", "width"]
    outputs = [
        OutputSpec(
            name="probability",
            role="prediction",
            kind="probability",
            shape=list(spatial),
            description="building probability per pixel",
        )
    ]
    for level in range(1, depth + 1):
        outputs.append(
            OutputSpec(
                name=f"gate_{level}",
                role="attention",
                kind="spatial",
                shape=["batch", 1, *_gate_dims(level)],
                level=level,
                stride=2 ** (level - 1),
                description=(
                    f"attention gate on skip connection {level} (1 = finest), at "
                    + ("the input's resolution" if level == 1 else f"1/{2 ** (level - 1)} of it")
                ),
            )
        )
    outputs.append(
        OutputSpec(
            name="band_weights",
            role="attention",
            kind="channel",
            shape=["batch", c],
            description="squeeze-and-excitation weight of each input band",
        )
    )
    dtype = str(config.get("dtype", "uint8"))
    lo, hi = (float(v) for v in config.get("value_range", (0.0, 255.0)))
    gsd = config.get("gsd_m")
    kind = (
        "8-bit RGB"
        if bands == list(DEFAULT_BANDS) and dtype == "uint8"
        else (f"{c}-band {dtype} ({', '.join(bands)})")
    )
    return Manifest(
        name=str(config.get("name", "footprints")),
        version=str(config.get("version", "1.0.0")),
        task="segmentation",
        description=(
            f"Building footprint segmentation of {kind} aerial or satellite imagery with "
            "an Attention U-Net: building probability per pixel plus the attention gate "
            "of every skip connection and the weight of each input band."
        ),
        input=InputSpec(
            bands=bands,
            accepted_dtypes=[dtype],
            value_range=[lo, hi],
            units="8-bit digital numbers"
            if dtype == "uint8" and (lo, hi) == (0.0, 255.0)
            else f"{dtype} digital numbers in {lo:g}..{hi:g}",
            gsd_m=None if gsd is None else float(gsd),
            normalization=Normalization(
                mean=[float(m) for m in config.get("mean", DEFAULT_MEAN)],
                std=[float(s) for s in config.get("std", DEFAULT_STD)],
                applied="in_graph",
            ),
            tile_size=512,
            tile_overlap=128,
            size_multiple=2**depth,
        ),
        tensors=[
            TensorSpec(
                name="image",
                dtype="float32",
                shape=["batch", c, "height", "width"],
                description=f"raw band values {lo:g}..{hi:g} as float32; height and width "
                f"multiples of {2**depth}",
            ),
            TensorSpec(
                name="band_mean",
                dtype="float32",
                shape=["batch", c],
                description="raw per-band mean of the valid pixels of the whole image or "
                "scene the tile comes from: the band attention squeezes from it, so a "
                "scene's tiles share the band weights the whole scene would get",
                default="band_mean",
            ),
        ],
        outputs=outputs,
        classes=["building"],
        training=dict(ckpt.get("training", {})),
        metrics={str(k): float(v) for k, v in ckpt.get("metrics", {}).items()},
    )


_SPATIAL_AXES = {0: "batch", 2: "height", 3: "width"}


def _gate_dims(level: int) -> tuple[str, str]:
    """Symbolic height and width of ``gate_level`` (the input's own at level 1)."""
    return ("height", "width") if level == 1 else (f"height_{level}", f"width_{level}")


def dynamic_axes(depth: int) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes: batch, height and width on images, probability and gates
    (each gate level with its own height and width), batch only on band weights."""
    axes: dict[str, dict[int, str]] = {
        "image": dict(_SPATIAL_AXES),
        "band_mean": {0: "batch"},
        "probability": dict(_SPATIAL_AXES),
    }
    for level in range(1, depth + 1):
        height, width = _gate_dims(level)
        axes[f"gate_{level}"] = {0: "batch", 2: height, 3: width}
    axes["band_weights"] = {0: "batch"}
    return axes


# The registry names a family's ONNX outputs once, so the exported family is the
# depth-4 model; other depths train and run in torch but do not export.
EXPORT_DEPTH = 4


def build_for_export(config: dict[str, Any]) -> AttentionUNet:
    """:func:`build`, refusing depths whose outputs the registered names do not cover."""
    depth = int(config.get("depth", EXPORT_DEPTH))
    if depth != EXPORT_DEPTH:
        raise ValueError(
            f"the footprints family exports depth-{EXPORT_DEPTH} models (outputs "
            f"{', '.join(output_names(EXPORT_DEPTH))}); this checkpoint has depth {depth}"
        )
    return build(config)


FAMILY = ModelFamily(
    name="footprints",
    build=build_for_export,
    example_inputs=example_inputs,
    input_names=("image", "band_mean"),
    output_names=output_names(EXPORT_DEPTH),
    dynamic_axes=dynamic_axes(EXPORT_DEPTH),
    manifest=manifest,
)
