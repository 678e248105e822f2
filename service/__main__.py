"""``python -m service --host H --port P``: serve the model repository with uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from service.app import create_app
from service.config import Settings


def serve(host: str | None = None, port: int | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; settings come from ``ATTNSERVE_*``."""
    settings = Settings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        timeout_keep_alive=5,
        access_log=False,
    )
    return 0


def main() -> int:
    """Parse ``--host`` and ``--port`` and serve."""
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    return serve(args.host, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
