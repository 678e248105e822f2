"""A model's outputs as its manifest describes them: role, kind and layout.

The kinds are the vocabulary the server serves by: ``probability`` and
``class_probabilities`` answers, and attention as ``spatial`` maps at any
stride, ``channel`` weights, ``temporal`` date weights or a ``token_grid``
over patches. Only the standard library is imported here (see
:mod:`service.runtime.manifest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

OutputRole = Literal["prediction", "attention"]
OutputKind = Literal[
    "probability", "class_probabilities", "spatial", "channel", "temporal", "token_grid"
]
OUTPUT_KINDS: tuple[str, ...] = (
    "probability",
    "class_probabilities",
    "spatial",
    "channel",
    "temporal",
    "token_grid",
)


@dataclass(frozen=True)
class OutputSpec:
    """One ONNX graph output and what it means.

    ``role`` is ``prediction`` for the model's answer and ``attention`` for the
    weights behind it; ``kind`` says how an attention output is laid out:
    ``spatial`` maps ``(B,1,H,W)`` or ``(B,heads,H,W)``, ``channel`` weights
    ``(B,C)`` or ``(B,C,1,1)`` (an SE or CBAM block's, or one per input band),
    ``temporal`` date weights ``(B,heads,T)``, ``token_grid`` weights ``(B,N)``
    or ``(B,heads,N)`` over the ``grid`` of ``[h, w]`` patches (a ViT's tokens).
    ``channels`` names a channel output's channels (optional: without names,
    weights of as many channels as the input has bands are the bands').

    ``stride`` is how many input pixels one value of a 4-D output covers along
    each axis: a map computed at 1/``stride`` of the input's resolution (e.g. a
    coarse skip connection's gate) is stored that small and upsampled
    bilinearly (half-pixel centres, as ONNX ``Resize``) to the input's grid
    only when it is served.
    """

    name: str
    role: OutputRole
    kind: OutputKind
    shape: list[int | str]
    level: int | None = None
    description: str = ""
    stride: int = 1
    grid: list[int] | None = None
    channels: list[str] | None = None

    @property
    def heads(self) -> int:
        """Heads of a map ``(B, heads, h, w)`` or a token grid ``(B, heads, N)``; else 1."""
        rank = len(self.shape)
        if (self.kind, rank) in (("spatial", 4), ("token_grid", 3), ("temporal", 3)):
            heads = self.shape[1]
            return heads if isinstance(heads, int) and heads > 0 else 1
        return 1

    def channel_names(self, bands: Sequence[str]) -> list[str]:
        """Names of a channel output's weights: its own, the input's bands, or ``channel_i``.

        Args:
            bands: the input's bands, named when the output has one weight per band.
        """
        count = self.shape[1] if len(self.shape) > 1 else None
        if self.channels:
            return list(self.channels)
        if not isinstance(count, int) or count == len(bands):
            return list(bands)
        return [f"channel_{i}" for i in range(count)]


def output_problems(out: OutputSpec, size_multiple: int | None) -> list[str]:
    """What is wrong with one output spec, each starting with the field's name.

    Args:
        out: the output.
        size_multiple: the input's (``input.size_multiple``), which a stride divides.
    """
    found: list[str] = []
    if out.role not in ("prediction", "attention"):
        found.append(f"role: output {out.name!r} has unknown role {out.role!r}")
    if out.kind not in OUTPUT_KINDS:
        found.append(
            f"kind: output {out.name!r} has unknown kind {out.kind!r}; "
            f"known: {', '.join(OUTPUT_KINDS)}"
        )
    if not isinstance(out.shape, list):
        found.append(f"shape: output {out.name!r} shape must be a list of dimensions")
        return found
    if isinstance(out.stride, bool) or not isinstance(out.stride, int) or out.stride < 1:
        found.append(f"stride: output {out.name!r} stride must be a positive integer")
        return found
    if (out.kind == "token_grid") != (out.grid is not None):
        found.append(f"grid: output {out.name!r}: a token_grid output, and only one, has a grid")
    if out.kind == "channel":
        return found + _channel_problems(out)
    if out.channels is not None:
        found.append(f"channels: output {out.name!r}: only a channel output names channels")
    if out.stride > 1 and (len(out.shape) != 4 or out.role == "prediction"):
        found.append(f"stride: output {out.name!r}: only 4-D attention maps may have a stride")
    elif out.stride > 1 and (size_multiple or 1) % out.stride:
        found.append(
            f"stride: output {out.name!r} stride {out.stride} must divide the input's "
            f"size_multiple ({size_multiple})"
        )
    return found


def _channel_problems(out: OutputSpec) -> list[str]:
    """A channel output is ``(B, C)`` or ``(B, C, 1, 1)``, with no stride and C names if any."""
    shape = out.shape
    if not (len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1])):
        return [
            f"shape: output {out.name!r} is channel attention, one weight per channel: "
            f"(B, C) or (B, C, 1, 1), not {shape}"
        ]
    found: list[str] = []
    if out.stride != 1:
        found.append(f"stride: output {out.name!r} is channel attention, which has no stride")
    names = out.channels
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) and n for n in names)
    ):
        found.append(f"channels: output {out.name!r} names its channels as a list of strings")
    elif names is not None and isinstance(shape[1], int) and len(names) != shape[1]:
        found.append(
            f"channels: output {out.name!r} has {shape[1]} channels but {len(names)} names"
        )
    return found
