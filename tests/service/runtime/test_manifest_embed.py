"""Embedding a manifest into an ONNX file's metadata, in place or as a copy."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.runtime.manifest import MANIFEST_KEY, Manifest, ManifestError
from service.runtime.manifest_draft import draft_manifest
from service.runtime.manifest_embed import embed_in_file
from tests.helpers.onnx_graphs import binary_segmenter, edited_draft


def _embedded(path: Path) -> Manifest:
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    return Manifest.from_json(meta[MANIFEST_KEY])


def test_a_manifest_is_embedded_in_place_and_replaced_later(tmp_path: Path) -> None:
    path = binary_segmenter(tmp_path / "roofs.onnx")
    manifest = Manifest.from_dict(edited_draft(draft_manifest(path).manifest))
    assert embed_in_file(path, manifest) == path
    assert _embedded(path) == manifest
    renamed = Manifest.from_dict({**manifest.to_dict(), "version": "1.1.0"})
    embed_in_file(path, renamed)
    assert _embedded(path).version == "1.1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roofs.onnx"]


def test_an_invalid_manifest_is_not_embedded(tmp_path: Path) -> None:
    path = binary_segmenter(tmp_path / "roofs.onnx")
    data = edited_draft(draft_manifest(path).manifest)
    data["outputs"][1]["kind"] = "heatmap"
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="unknown kind"):
        embed_in_file(path, Manifest.from_dict(data, validate=False), tmp_path / "out.onnx")
    assert path.read_bytes() == before
    assert not (tmp_path / "out.onnx").exists()
