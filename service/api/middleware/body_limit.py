"""Request body limits: size (413), header size (431), stalls and trickles (408)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response


class BodyRefused(Exception):
    """Raised inside ``receive`` when a body passes its limit or stalls while streaming."""


_JSON_TYPES = (b"application/json",)


def _refusal(status: int, code: str, message: str) -> Response:
    """An error answer that closes the connection: the rest of the body is never read."""
    return error_response(status, code, message, headers={"Connection": "close"})


@dataclass(eq=False)
class BodyLimit:
    """Refuses bodies over their limit (413) and bodies that stall or trickle (408).

    Content-Length is checked up front; chunked bodies are counted as they
    stream in, so a lying or missing Content-Length gains nothing. JSON bodies
    have their own, smaller limit. Each wait for the next chunk is bounded by
    ``read_timeout_s``, and every ``rate_window_s`` (the first window is the
    grace period) at least ``min_rate_bps`` bytes per second must have come: a
    client sending one byte every few seconds never trips a gap timeout, but
    it trips this. Once a body is refused, whatever the app answers (its parser
    may have turned the error into a 422) is replaced by the refusal.
    """

    app: ASGIApp
    max_bytes: int
    max_json_bytes: int | None = None
    read_timeout_s: float | None = None
    max_head_bytes: int = 64 * 1024
    min_rate_bps: float = 0.0
    rate_window_s: float = 10.0

    def _limit_for(self, scope: Scope) -> int:
        for name, value in scope["headers"]:
            if name == b"content-type" and value.split(b";")[0].strip().lower() in _JSON_TYPES:
                return min(self.max_bytes, self.max_json_bytes or self.max_bytes)
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
        head += sum(len(name) + len(value) for name, value in scope["headers"])
        if head > self.max_head_bytes:
            # The HTTP parser's own bound is looser and depends on how the bytes
            # arrived; this one is exact.
            await _refusal(
                431,
                "request_header_fields_too_large",
                f"request line and headers are over the {self.max_head_bytes // 1024} KiB limit",
            )(scope, receive, send)
            return
        limit = self._limit_for(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._too_large(limit)(scope, receive, send)
                    return
        seen = 0
        body_done = False
        refusal: Response | None = None
        started = replaced = False
        loop = asyncio.get_running_loop()
        # The rate is measured over time spent waiting for the client, not wall
        # time: a handler that reads its body late must not make the client slow.
        waited = 0.0
        window_seen = 0

        def trickling() -> bool:
            """Whether the window that just ended brought too few bytes (then a new one starts)."""
            nonlocal waited, window_seen
            if not self.min_rate_bps or waited < self.rate_window_s:
                return False
            if seen - window_seen < self.min_rate_bps * self.rate_window_s:
                return True
            waited, window_seen = 0.0, seen
            return False

        async def next_message() -> Message:
            nonlocal refusal, waited
            # One receive, waited for in steps: the rate is judged at each window's
            # end even while no byte comes.
            pending = asyncio.ensure_future(receive())
            stall_left = self.read_timeout_s or float("inf")
            while True:
                window_left = self.rate_window_s - waited if self.min_rate_bps else float("inf")
                step = max(0.0, min(stall_left, window_left))
                began = loop.time()
                done, _ = await asyncio.wait({pending}, timeout=step)
                spent = loop.time() - began
                waited += spent
                stall_left -= spent
                if done:
                    return pending.result()
                if stall_left <= 0:
                    refusal = self._too_slow()
                elif trickling():
                    refusal = self._trickling()
                else:
                    continue
                pending.cancel()
                raise BodyRefused

        async def counted() -> Message:
            nonlocal seen, body_done, refusal
            if refusal is not None:
                raise BodyRefused
            if body_done or (self.read_timeout_s is None and not self.min_rate_bps):
                # After the body only http.disconnect is left to wait for.
                message = await receive()
            else:
                message = await next_message()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    refusal = self._too_large(limit)
                    raise BodyRefused
                if not body_done and trickling():
                    refusal = self._trickling()
                    raise BodyRefused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start" and not started:
                started = True
                if refusal is not None:
                    # The app answered a body it could not read whole (its parser
                    # may have called it a 422): the client gets the refusal.
                    replaced = True
                    await refusal(scope, receive, send)
                    return
            if not replaced:
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except BodyRefused:
            if not started and refusal is not None:
                await refusal(scope, receive, send)

    def _too_large(self, limit: int) -> Response:
        message = f"request body is over the {limit / 2**20:g} MB limit"
        return _refusal(413, "payload_too_large", message)

    def _trickling(self) -> Response:
        message = (
            f"the request body is arriving too slowly: under {self.min_rate_bps:g} bytes/s "
            f"over {self.rate_window_s:g} s"
        )
        return _refusal(408, "request_timeout", message)

    def _too_slow(self) -> Response:
        message = f"the request body stalled: no data for {self.read_timeout_s:g} s"
        return _refusal(408, "request_timeout", message)
