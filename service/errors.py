"""The domain exceptions; ``service.api.errors`` maps each to an HTTP status.

Messages are shown to users: they name what is wrong and never carry paths,
stack traces or file contents.
"""

from __future__ import annotations

from typing import Any


class AttnserveError(Exception):
    """Base of every error the service reports to a client."""

    code = "error"

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInput(AttnserveError):
    """The request's content is wrong (values, shapes, fields)."""

    code = "invalid_input"


class InvalidRaster(InvalidInput):
    """An uploaded raster cannot be opened or read."""

    code = "invalid_raster"


class UnsupportedRaster(InvalidInput):
    """A raster opens but does not fit the model (dtype, bands, size, values)."""

    code = "unsupported_raster"


class PayloadTooLarge(AttnserveError):
    """The body, a part or a decoded raster is over a configured limit."""

    code = "payload_too_large"


class UnsupportedMediaType(AttnserveError):
    """The Content-Type is not one this endpoint reads."""

    code = "unsupported_media_type"


class NotFound(AttnserveError):
    """A model, job or layer does not exist (or is not yours, or has expired)."""

    code = "not_found"


class Unauthorized(AttnserveError):
    """No valid API key was presented."""

    code = "unauthorized"


class Overloaded(AttnserveError):
    """A bounded queue is full; the client should retry later."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(AttnserveError):
    """A request did not finish within its deadline."""

    code = "deadline_exceeded"


class InferenceFailed(AttnserveError):
    """The inference runtime failed on a batch (e.g. out of memory)."""

    code = "inference_failed"


class StorageFailed(AttnserveError):
    """The job store could not be written (disk full, I/O error); nothing was kept."""

    code = "storage_failed"


class NotReady(AttnserveError):
    """The server is loading, draining or its models are unavailable."""

    code = "not_ready"


class Conflict(AttnserveError):
    """The request conflicts with the resource's state (e.g. a finished job)."""

    code = "conflict"
