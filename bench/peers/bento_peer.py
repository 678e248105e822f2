"""BentoML with adaptive batching: a front service decodes, a model service batches.

``bentoml serve bench.peers.bento_peer:Footprints --host 127.0.0.1 --port 8003``
(from the repository root). BentoML batches only calls that reach a
``batchable`` API, so the model runs in a service of its own
(``FootprintsModel``, ``max_batch_size`` = attnserve's 4) that the front service
calls, the composition BentoML documents; each runs one worker. ``POST
/predict``: attnserve's multipart upload (``image``, ``model``), the probability
back (``bench.peers.common``); BentoML's own ``GET /readyz`` says when it is up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import bentoml
import numpy as np

from bench.peers import common

# As every server of the benchmark: no access log (attnserve logs warnings only).
CONFIG = {"workers": 1, "traffic": {"timeout": 300}, "logging": {"access": {"enabled": False}}}


@bentoml.service(**CONFIG)
class FootprintsModel:
    """The session, behind BentoML's adaptive batching."""

    def __init__(self) -> None:
        self.sess = common.session()

    @bentoml.api(batchable=True, max_batch_size=common.MAX_BATCH, max_latency_ms=60_000)
    def infer(self, images: np.ndarray) -> np.ndarray:
        """``(B, C, H, W)`` tiles to ``(B, H, W)`` probabilities."""
        return np.stack(common.run(self.sess, list(images)))


@bentoml.service(**CONFIG)
class Footprints:
    """The HTTP front: decodes the upload, asks the model service, answers the bytes."""

    model = bentoml.depends(FootprintsModel)

    @bentoml.api(route="/predict")
    async def predict(self, image: Path, ctx: bentoml.Context, model: str = "footprints") -> bytes:
        """One tile's probability; its headers go through BentoML's response context."""
        tile = await asyncio.to_thread(common.decode, image.read_bytes())
        probability = await self.model.to_async.infer(tile[None])
        body, headers = common.encode(probability[0])
        ctx.response.metadata.update({**headers, "Content-Type": common.MEDIA_TYPE})
        return body
