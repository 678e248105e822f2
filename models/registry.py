"""A small registry of model families: how to build, feed and describe each one."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from service.runtime.manifest import Manifest

# family name -> module that defines ``FAMILY``; imported lazily so that listing
# families costs no torch import.
_FAMILY_MODULES = {
    "footprints": "models.attention_unet",
    "crops": "models.ltae",
}


@dataclass(frozen=True)
class ModelFamily:
    """Everything export needs to know about one architecture.

    Attributes:
        name: family name, as used by ``attnserve train NAME``.
        build: makes the ``torch.nn.Module`` from a checkpoint's config dict.
        example_inputs: ``(config, batch)`` -> example input tensors, in
            ``input_names`` order, used for tracing and parity tests.
        input_names: ONNX graph input names.
        output_names: ONNX graph output names (prediction first).
        dynamic_axes: ONNX dynamic axes, by tensor name.
        manifest: ``(checkpoint dict)`` -> the model's manifest.
    """

    name: str
    build: Callable[[dict[str, Any]], torch.nn.Module]
    example_inputs: Callable[[dict[str, Any], int], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    manifest: Callable[[dict[str, Any]], Manifest]


def list_families() -> list[str]:
    """Names of the known model families."""
    return sorted(_FAMILY_MODULES)


def get_family(name: str) -> ModelFamily:
    """The family called ``name``.

    Raises:
        KeyError: no such family.
    """
    try:
        module_name = _FAMILY_MODULES[name]
    except KeyError:
        raise KeyError(
            f"unknown model family {name!r}; known: {', '.join(list_families())}"
        ) from None
    family: ModelFamily = importlib.import_module(module_name).FAMILY
    return family
