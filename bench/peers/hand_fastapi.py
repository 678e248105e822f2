"""A hand-written FastAPI + ONNX Runtime server: one session, no batching.

``python -m bench.peers.hand_fastapi --port 8001``. ``POST /predict`` takes
attnserve's multipart upload and answers the probability (``bench.peers.common``);
each request runs the session on its own in FastAPI's thread pool, so
concurrent requests share the session's threads. ``GET /readyz`` answers 200.
"""

from __future__ import annotations

import argparse
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import Response

from bench.peers import common


def app() -> FastAPI:
    """The peer's application, its session loaded."""
    sess = common.session()
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @api.post("/predict")
    def predict(
        image: Annotated[UploadFile, File()], model: Annotated[str, Form()] = "footprints"
    ) -> Response:
        (probability,) = common.run(sess, [common.decode(image.file.read())])
        body, headers = common.encode(probability)
        return Response(body, media_type=common.MEDIA_TYPE, headers=headers)

    return api


def main() -> int:
    """Serve on 127.0.0.1 with one uvicorn worker."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.hand_fastapi")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
