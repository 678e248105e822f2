"""Export any PyTorch model with tensors it computes inside as extra ONNX outputs.

A user names submodules (``encoder.cbam.spatial``, or ``ltae[1]`` for the second
element of a submodule's tuple output); forward hooks capture what they return
during tracing, and the exported graph gives those tensors after the model's own
outputs: attention from the same forward pass, no second explanation pass. The
exported file gets a drafted manifest beside it (``NAME.manifest.json``) that
the user edits, checks and serves, or embeds (``attnserve manifest``).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from service.runtime.manifest import sidecar_path
from service.runtime.manifest_draft import Draft, draft_manifest

OPSET = 17
# Largest difference allowed between the model in torch and the exported graph.
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class Capture:
    """One tensor to capture: the output of submodule ``module`` (element ``index`` of a tuple)."""

    name: str
    module: str
    index: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Capture:
        """``name=path.to.module[index]``; ``name=`` defaults to the path with dots as ``_``."""
        name, _, target = spec.rpartition("=")
        match = re.fullmatch(r"([A-Za-z_][\w.]*)(?:\[(\d+)\])?", target.strip())
        if match is None:
            raise ValueError(f"{spec!r} is not NAME=path.to.submodule or path.to.submodule[i]")
        path, index = match.group(1), match.group(2)
        name = name.strip() or path.replace(".", "_") + (f"_{index}" if index else "")
        return cls(name, path, int(index) if index is not None else None)


class CapturingModel(nn.Module):
    """``model`` whose forward also returns what the captured submodules gave, in order."""

    def __init__(self, model: nn.Module, captures: Sequence[Capture]) -> None:
        super().__init__()
        self.model = model
        self.captures = list(captures)
        for capture in self.captures:
            try:
                model.get_submodule(capture.module)
            except AttributeError:
                raise ValueError(
                    f"{type(model).__name__} has no submodule {capture.module!r}; it has "
                    f"{', '.join(n for n, _ in model.named_modules() if n) or 'none'}"
                ) from None

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's outputs, then one tensor per capture."""
        seen: dict[str, torch.Tensor] = {}
        handles = [
            self.model.get_submodule(c.module).register_forward_hook(_hook(c, seen))
            for c in self.captures
        ]
        try:
            result = self.model(*inputs)
        finally:
            for handle in handles:
                handle.remove()
        outputs = tuple(result) if isinstance(result, tuple | list) else (result,)
        missing = [c.module for c in self.captures if c.name not in seen]
        if missing:
            raise ValueError(f"submodules {missing} did not run in the model's forward")
        return (*outputs, *(seen[c.name] for c in self.captures))


def _hook(capture: Capture, seen: dict[str, torch.Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        value = output
        if capture.index is not None:
            value = output[capture.index]
        elif isinstance(output, tuple | list):
            shapes = [tuple(o.shape) if torch.is_tensor(o) else type(o).__name__ for o in output]
            raise ValueError(
                f"submodule {capture.module!r} returns {len(output)} values {shapes}: "
                f"name one, e.g. {capture.module}[1]"
            )
        if not torch.is_tensor(value):
            raise ValueError(f"submodule {capture.module!r} gave {type(value).__name__}, no tensor")
        # The first call wins: a submodule run twice would otherwise keep its last.
        seen.setdefault(capture.name, value)

    return hook


def default_dynamic_axes(inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """Batch always; height and width of images ``(B, C, H, W)``; dates of series.

    A series ``(B, T, C)`` makes ``T`` dynamic in it and in every ``(B, T)`` input
    (days, validity masks).
    """
    dates = next((t.shape[1] for t in inputs.values() if t.ndim == 3), None)
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in inputs.items():
        axis: dict[int, str] = {0: "batch"}
        if tensor.ndim == 4:
            axis.update({2: "height", 3: "width"})
        elif tensor.ndim == 3 or (tensor.ndim == 2 and tensor.shape[1] == dates):
            axis[1] = "dates"
        axes[name] = axis
    return axes


def export_with_attention(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    out: Path,
    captures: Sequence[Capture | str],
    *,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    name: str | None = None,
    version: str | None = None,
) -> Draft:
    """Export ``model`` to ``out`` with captured tensors as extra outputs; draft its manifest.

    Args:
        model: any module; put in eval mode.
        inputs: example inputs by graph input name, in the order ``forward`` takes them.
        out: the ONNX file to write; its drafted manifest goes to ``NAME.manifest.json``.
        captures: what to capture (:class:`Capture` or its ``name=path[i]`` text).
        output_names: names of the model's own outputs (default ``output_0``, ...;
            the first is taken for the prediction).
        dynamic_axes: by input name; :func:`default_dynamic_axes` by default.
        name, version: the model's, for the manifest (default: from the file name).

    Returns:
        The drafted manifest and notes on what to edit.

    Raises:
        ValueError: a submodule is unknown or gave no single tensor, or the exported
            graph does not reproduce the model on the example inputs.
    """
    wanted = [c if isinstance(c, Capture) else Capture.parse(c) for c in captures]
    wrapper = CapturingModel(model.eval(), wanted).eval()
    feed = tuple(inputs.values())
    with torch.no_grad():
        expected = wrapper(*feed)
    own = len(expected) - len(wanted)
    names = list(output_names or [f"output_{i}" for i in range(own)])
    if len(names) != own:
        raise ValueError(f"the model gives {own} outputs; {len(names)} names were given")
    names += [c.name for c in wanted]
    axes = dict(dynamic_axes or default_dynamic_axes(inputs))
    axes.update({n: {0: "batch"} for n in names})
    out.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter traces through hooks and keeps shapes symbolic
    # with dynamic_axes, as the shipped families' export does.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            feed,
            str(out),
            input_names=list(inputs),
            output_names=names,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    _check_parity(out, inputs, dict(zip(names, expected, strict=True)))
    draft = draft_manifest(
        out, name=name, version=version, prediction=names[0], attention=names[own:]
    )
    sidecar_path(out).write_text(json.dumps(draft.manifest, indent=2) + "\n")
    return draft


def _check_parity(
    path: Path, inputs: Mapping[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(expected), {k: v.numpy() for k, v in inputs.items()})
    for (name, want), value in zip(expected.items(), got, strict=True):
        diff = float(np.abs(np.asarray(value) - want.numpy()).max()) if value.size else 0.0
        if not diff <= PARITY_ATOL:
            raise ValueError(
                f"the exported graph's {name!r} differs from the model's by {diff:.3g}: "
                "tracing may have fixed a shape or branch the model takes on its inputs"
            )


def load_factory(spec: str) -> Any:
    """Call ``pkg.mod:factory`` (from the working directory too, as ``uvicorn`` does)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--module takes pkg.mod:factory, not {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory()


def example_input(spec: str) -> tuple[str, torch.Tensor]:
    """``NAME=2x3x64x64`` or ``NAME=1x12:bool`` as a seeded example tensor."""
    name, _, rest = spec.partition("=")
    dims, _, dtype = rest.partition(":")
    try:
        shape = [int(d) for d in dims.split("x")]
    except ValueError:
        raise ValueError(f"--input takes NAME=DxDxD[:dtype], not {spec!r}") from None
    gen = torch.Generator().manual_seed(0)
    if dtype == "bool":
        return name, torch.ones(shape, dtype=torch.bool)
    if dtype not in ("", "float32"):
        raise ValueError(f"--input {name}: dtype {dtype!r}; float32 or bool")
    return name, torch.rand(shape, generator=gen) * 255
