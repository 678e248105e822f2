"""Half-precision (FP16) variants of exported models, for GPU serving.

On a GPU, float16 halves the weights' and activations' memory traffic and runs
convolutions and matrix products on tensor cores. The converter is ONNX
Runtime's own (``onnxruntime.transformers.float16``); what this module adds is
what our models need from it:

* inputs and outputs stay float32 (``keep_io_types``): requests, the batcher
  and the job store are unchanged, and the casts run inside the graph, on the
  device;
* nodes are put back in topological order with the same package's sort (the
  converter appends its casts at the end of the graph, which ONNX's checker
  rejects);
* the model's metadata names its precision (``attnserve.precision``), which the
  server reports per model. Name, version and manifest are kept: a model
  repository holds one precision of each version.

On the shipped models the float16 copy stays within 0.013 of the float32
probabilities and 0.014 of the attention weights (real imagery, synthetic
series; ``tests/models/test_half.py``). On CPU it is slower (about 8% for
footprints, 20% for crops, measured on 2 cores): most CPU kernels compute in
float32 and the graph gains casts, so keep the float32 files there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from service.runtime.manifest import MANIFEST_KEY, PRECISION_KEY, Manifest


def convert_to_float16(src: Path, out: Path) -> Manifest:
    """Write a float16 copy of the model ``src`` to ``out``; returns its manifest.

    Raises:
        ValueError: ``src`` is not an attnserve model, or is float16 already.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        model = onnx.load(str(src))
    except DecodeError:
        raise ValueError(f"{src} is not an ONNX model") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if MANIFEST_KEY not in meta:
        raise ValueError(f"{src} carries no attnserve manifest")
    if meta.get(PRECISION_KEY, "float32") != "float32":
        raise ValueError(f"{src} is {meta[PRECISION_KEY]} already")
    manifest = Manifest.from_json(meta[MANIFEST_KEY])
    half = convert_float_to_float16(model, keep_io_types=True)
    OnnxModel.graph_topological_sort(half.graph)
    # The manifest says what the graph computes in, as the metadata key does.
    manifest = dataclasses.replace(manifest, precision="float16")
    kept = [p for p in half.metadata_props if p.key not in (PRECISION_KEY, MANIFEST_KEY)]
    del half.metadata_props[:]
    half.metadata_props.extend(kept)
    half.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    half.metadata_props.add(key=PRECISION_KEY, value="float16")
    onnx.checker.check_model(half, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(half, str(out))
    return manifest
