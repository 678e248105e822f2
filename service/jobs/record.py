"""A stored job's metadata, its id and its owner tag."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from service.errors import NotFound

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job id."""
    return bool(_ID.match(text))


def new_id() -> str:
    """A fresh unguessable job id: 96 random bits, then its creation time.

    The time (milliseconds, the last 8 characters) lets another replica tell
    a job that is still being written behind from one that does not exist
    (see :func:`id_age_s`). The random part comes first, so shards stay even.
    """
    stamp = int(time.time() * 1000).to_bytes(6, "big")
    return secrets.token_urlsafe(12) + base64.urlsafe_b64encode(stamp).decode()


def id_age_s(job_id: str) -> float | None:
    """Seconds since a job id was made, from the time it carries (None: not an id).

    Replicas' clocks may differ a little, so the age can be slightly negative.
    Ids made before ids carried a time decode to a random one, almost never
    near now.
    """
    if not _ID.match(job_id):
        return None
    made = int.from_bytes(base64.urlsafe_b64decode(job_id[-8:]), "big") / 1000
    return time.time() - made


def owner_of(api_key: str | None) -> str | None:
    """The owner tag stored with a job: a hash, never the key itself."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


@dataclass
class JobRecord:
    """A stored job's metadata (its arrays live beside it).

    Attributes:
        id: unguessable job id.
        model: ``{"name", "version", "task"}``.
        kind: ``raster`` or ``series``.
        created: epoch seconds.
        expires: epoch seconds.
        layers: one entry per stored array: ``name``, ``role``, ``kind``,
            ``shape``, ``dtype`` and extras such as ``level`` or ``dates``.
        georef: the input's georeference (rasters).
        extra: anything else the response needs later (dates, item ids).
        owner: hash of the API key that made it, or None.
        packed: array name -> byte offset of its ``.npy`` image in ``arrays.npk``.
    """

    id: str
    model: dict[str, str]
    kind: str
    created: float
    expires: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    georef: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    state: str = "done"
    progress: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    packed: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINAL_STATES

    def layer(self, name: str) -> dict[str, Any]:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer["name"] == name:
                return layer
        raise NotFound(f"job has no layer {name!r}; layers: {', '.join(self.layer_names())}")

    def layer_names(self) -> list[str]:
        """Names of the stored layers."""
        return [layer["name"] for layer in self.layers]
