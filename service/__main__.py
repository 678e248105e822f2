"""``python -m service --host H --port P``: serve the model repository with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.app import create_app
from service.config import Settings
from service.memory import limit_malloc_arenas
from service.raster.gdal_env import disable_risky_drivers

# h11 refuses (400) a request head still incomplete past this many buffered bytes. Heads
# that arrive whole in one read pass it whatever their size, so the exact limit (431 past
# 64 KiB) is BodyLimit's; this one only bounds what is buffered before it can act.
MAX_REQUEST_HEAD_BUFFER = 1024 * 1024


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's head.

    uvicorn times out idle keep-alive connections, but not a client that opens
    a connection and sends its headers a byte at a time (or never): such a
    connection is closed ``head_timeout_s`` after it opened or after its last
    answer, unless a complete request head has arrived by then.
    """

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the head deadline with the connection."""
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Parse what arrived; a new request (a new cycle) means its head is complete."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        """After an answer the next request's head has its own deadline."""
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM marking the app as draining at once.

    On the first SIGTERM (or SIGINT) ``/readyz`` turns 503 and new requests get
    503, while requests in flight go on. After ``drain_delay_s`` uvicorn's own
    graceful shutdown starts: it stops listening, waits for open requests up to
    its grace timeout, then runs the lifespan's shutdown. A second signal skips
    the delay.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_delay_s = drain_delay_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining on the first signal; shut down after the delay or a second one."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_delay_s
            state = getattr(self.app.state, "attnserve", None)
            if state is not None:
                state.draining = True
            if self.drain_delay_s > 0:
                # Re-raised by uvicorn after shutdown, as when it handles the signal itself.
                self._captured_signals.append(sig)
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s), ending the drain delay when it is over."""
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)


def serve(
    host: str | None = None,
    port: int | None = None,
    model_dir: Path | None = None,
    model_name: str | None = None,
) -> int:
    """Run the server until SIGINT/SIGTERM; settings come from ``ATTNSERVE_*`` and the arguments."""
    disable_risky_drivers()
    given = {"host": host, "port": port, "model_dir": model_dir, "model_name": model_name}
    overrides = {k: v for k, v in given.items() if v is not None}
    # Validated as the environment is (a model name with a slash fails here, not at load).
    settings = Settings(**overrides)  # type: ignore[arg-type]
    # Before any server thread allocates (glibc reads the limit when it makes an arena).
    limit_malloc_arenas(settings.malloc_arena_max)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn reads a grace of 0 as "wait forever"; a second is the shortest it takes.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        timeout_keep_alive=settings.keep_alive_s,
        # h11, not httptools: httptools puts no bound on the size of a request's head.
        http=type("H11", (HeadTimeoutH11,), {"head_timeout_s": settings.request_head_timeout_s}),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BUFFER,
        access_log=False,
    )
    DrainingServer(config, app, settings.drain_delay_s).run()
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
