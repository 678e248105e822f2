"""Export a training checkpoint to ONNX with its manifest in the model metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from models.registry import get_family
from service.runtime.manifest import MANIFEST_KEY, Manifest
from service.runtime.manifest_embed import embed_manifest

OPSET = 17


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``attnserve train``.

    A checkpoint is a dict with ``family``, ``config``, ``state_dict``,
    ``metrics`` and ``training`` entries.
    """
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("family", "config", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{path} is not an attnserve checkpoint: no {key!r}")
    return ckpt


def build_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """The checkpoint's model with its weights loaded, in eval mode."""
    family = get_family(ckpt["family"])
    model = family.build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    name: str | None = None,
    version: str | None = None,
) -> Manifest:
    """Export ``checkpoint`` to ``out`` (ONNX, opset 17, dynamic axes) and check it.

    Returns:
        The manifest embedded in the exported file.
    """
    ckpt = load_checkpoint(checkpoint)
    if name is not None:
        ckpt.setdefault("config", {})["name"] = name
    if version is not None:
        ckpt.setdefault("config", {})["version"] = version
    family = get_family(ckpt["family"])
    model = build_model(ckpt)
    example = family.example_inputs(ckpt["config"], 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    # The TorchScript exporter handles the data-dependent shapes of both
    # architectures (interpolation to input size, masked softmax) with plain
    # dynamic_axes, which is all these models need.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=list(family.input_names),
            output_names=list(family.output_names),
            dynamic_axes=family.dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(tmp))
    manifest = family.manifest(ckpt)
    embed_manifest(proto, manifest)
    proto.producer_name = "attnserve"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    tmp.unlink(missing_ok=True)
    return manifest


def read_manifest(path: Path) -> Manifest:
    """The manifest embedded in an ONNX file."""
    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == MANIFEST_KEY:
            return Manifest.from_json(prop.value)
    raise ValueError(f"{path} carries no attnserve manifest")
