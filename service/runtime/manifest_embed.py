"""Writing a manifest into an ONNX file's metadata (needs the ``onnx`` package, not torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from service.runtime.manifest import MANIFEST_KEY, Manifest

if TYPE_CHECKING:
    import onnx


def embed_manifest(model: onnx.ModelProto, manifest: Manifest) -> None:
    """Store the manifest as JSON in the model's metadata (replacing any old one)."""
    manifest.validate()
    kept = [p for p in model.metadata_props if p.key != MANIFEST_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    model.doc_string = manifest.description


def embed_in_file(model: Path, manifest: Manifest, out: Path | None = None) -> Path:
    """Write ``model`` with ``manifest`` in its metadata to ``out`` (the file itself by default).

    The new file appears whole or not at all (written beside it, then renamed).
    """
    import onnx

    target = out or model
    proto = onnx.load(str(model))
    embed_manifest(proto, manifest)
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, target)
    return target
