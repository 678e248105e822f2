"""Ray Serve with ``@serve.batch``: one replica, tiles batched as attnserve batches them.

``python -m bench.peers.ray_peer --port 8002`` starts a local Ray (no dashboard,
no usage reporting, as many CPUs as the process may use), serves one replica
behind Ray Serve's HTTP proxy on 127.0.0.1 and runs until SIGTERM. ``POST
/predict``: attnserve's multipart upload, the probability back
(``bench.peers.common``); ``GET /readyz``: 200 once the replica is up.

Decoding runs in a thread; ``infer`` collects up to ``MAX_BATCH`` tiles within
``BATCH_WAIT_S`` (attnserve's defaults) and runs them as one batch in a thread,
so the replica's event loop keeps taking requests meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from bench.peers import common

# As every server of the benchmark: no access log (attnserve logs warnings only).
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0},
    logging_config=QUIET,
)
class Footprints:
    """The footprints model as one Ray Serve replica."""

    def __init__(self) -> None:
        self.sess = common.session()

    @serve.batch(max_batch_size=common.MAX_BATCH, batch_wait_timeout_s=common.BATCH_WAIT_S)
    async def infer(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One batch of tiles through the session."""
        return await asyncio.to_thread(common.run_grouped, self.sess, images)

    async def __call__(self, request: Request) -> Response:
        if request.url.path.rstrip("/").endswith("readyz"):
            return PlainTextResponse("ready")
        form = await request.form()
        upload = form["image"]
        data = await upload.read()  # type: ignore[union-attr]
        image = await asyncio.to_thread(common.decode, data)
        probability = await self.infer(image)
        body, headers = common.encode(probability)
        return Response(body, media_type=common.MEDIA_TYPE, headers=headers)


def main() -> int:
    """Start Ray and Serve, deploy, wait for SIGTERM, shut both down."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.ray_peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(
        num_cpus=common.usable_cpus(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PEER_THREADS": str(common.threads())}},
    )
    serve.start(http_options={"host": args.host, "port": args.port}, logging_config=QUIET)
    serve.run(Footprints.bind(), name="footprints", route_prefix="/")
    print(f"ray peer serving on {args.host}:{args.port} (pid {os.getpid()})", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
