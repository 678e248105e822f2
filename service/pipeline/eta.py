"""Time left of a running job, from its pace so far."""

from __future__ import annotations

import time


def elapsed_eta(started: float, done: int, total: int) -> float | None:
    """Seconds left, from the pace since ``started`` (epoch seconds); None before any is done."""
    if done <= 0:
        return None
    pace = (time.time() - started) / done
    return round(pace * (total - done), 1)
