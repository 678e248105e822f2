"""The domain exceptions; ``service.api.errors`` maps each to an HTTP status.

Messages are shown to users: they name what is wrong and never carry paths,
stack traces or file contents.
"""

from __future__ import annotations

import re
from typing import Any


class AttnserveError(Exception):
    """Base of every error the service reports to a client."""

    code = "error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The codes clients see are this module's class names in snake case (NotFound:
        # not_found), so the two cannot drift apart. Subclasses elsewhere refine an
        # error without widening that vocabulary: they keep their base's code.
        if cls.__module__ == __name__ and "code" not in cls.__dict__:
            cls.code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidInput(AttnserveError):
    """The request's content is wrong (values, shapes, fields)."""


class InvalidRaster(InvalidInput):
    """An uploaded raster cannot be opened or read."""


class UnsupportedRaster(InvalidInput):
    """A raster opens but does not fit the model (dtype, bands, size, values)."""


class PayloadTooLarge(AttnserveError):
    """The body, a part or a decoded raster is over a configured limit."""


class UnsupportedMediaType(AttnserveError):
    """The Content-Type is not one this endpoint reads."""


class Forbidden(AttnserveError):
    """The request asks for something this server will not do for anyone (a URL it may not read)."""


class NotFound(AttnserveError):
    """A model, job or layer does not exist (or is not yours, or has expired)."""


class Unauthorized(AttnserveError):
    """No valid API key was presented."""


class Overloaded(AttnserveError):
    """A bounded queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.retry_after_s = retry_after_s


class TooManyRequests(Overloaded):
    """One API key has as much work waiting as it may; it should retry later."""


class DeadlineExceeded(AttnserveError):
    """A request did not finish within its deadline."""


class InferenceFailed(AttnserveError):
    """The inference runtime failed on a batch (e.g. out of memory)."""


class StorageFailed(AttnserveError):
    """The job store could not be written (disk full, I/O error); nothing was kept."""


class NotReady(AttnserveError):
    """The server is loading, draining or its models are unavailable."""


class Conflict(AttnserveError):
    """The request conflicts with the resource's state (e.g. a finished job)."""
