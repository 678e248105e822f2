"""Triton's own HTTP client against a live server: one image tensor in, named outputs back."""

from __future__ import annotations

from typing import Any

import numpy as np


def infer_image(
    url: str, model: str, image: np.ndarray, outputs: list[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The model's metadata and ``outputs`` for ``image`` (FP32, sent as binary data)."""
    import tritonclient.http as httpclient  # the callers skip without it

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        meta = client.get_model_metadata(model)
        tensor = httpclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image.astype(np.float32), binary_data=True)
        result = client.infer(model, [tensor])
        return meta, {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()
