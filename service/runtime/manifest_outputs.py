"""A model's outputs as its manifest describes them: role, kind and layout.

The kinds are the vocabulary the server serves by: ``probability`` and
``class_probabilities`` answers, and attention as ``spatial`` maps at any
stride, ``channel`` weights, ``temporal`` date weights or a ``token_grid``
over patches. Only the standard library is imported here (see
:mod:`service.runtime.manifest`).
"""

from __future__ import annotations

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
    ``spatial`` maps ``(B,1,H,W)``, ``channel`` band weights ``(B,C)``,
    ``temporal`` date weights ``(B,heads,T)``, ``token_grid`` weights ``(B,N)``
    or ``(B,heads,N)`` over the ``grid`` of ``[h, w]`` patches (a ViT's tokens).

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
    if out.stride > 1 and (len(out.shape) != 4 or out.role == "prediction"):
        found.append(f"stride: output {out.name!r}: only 4-D attention maps may have a stride")
    elif out.stride > 1 and (size_multiple or 1) % out.stride:
        found.append(
            f"stride: output {out.name!r} stride {out.stride} must divide the input's "
            f"size_multiple ({size_multiple})"
        )
    return found
