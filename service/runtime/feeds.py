"""Feeds of several requests as one batch, and a batch's outputs as each request's own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.runtime.manifest import Manifest

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Padding:
    """Lets requests whose inputs differ in length along one axis share a batch.

    Attributes:
        inputs: input name -> (axis, fill value) to pad to the batch's longest.
        outputs: output name -> axis to trim back to each request's own length.
    """

    inputs: dict[str, tuple[int, float | bool]] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)

    def lengths(self, feed: Feed) -> dict[str, int]:
        """A feed's length along each padded input's axis."""
        return {name: feed[name].shape[axis] for name, (axis, _) in self.inputs.items()}

    def batch_key(self, feed: Feed) -> tuple[object, ...]:
        """What feeds must share to be one batch: all dimensions but the batch and padded axes."""
        key = []
        for name, array in sorted(feed.items()):
            spec = self.inputs.get(name)
            pad = spec[0] if spec else None
            shape = tuple(d for i, d in enumerate(array.shape) if i not in (0, pad))
            key.append((name, str(array.dtype), shape))
        return tuple(key)

    def merge(self, feeds: Sequence[Feed]) -> Feed:
        """One batch of ``feeds``, padded inputs padded to the longest first."""
        if len(feeds) == 1 and not self.inputs:
            return feeds[0]
        merged: Feed = {}
        for name in feeds[0]:
            arrays = [feed[name] for feed in feeds]
            pad = self.inputs.get(name)
            if pad is not None:
                axis, fill = pad
                longest = max(a.shape[axis] for a in arrays)
                arrays = [pad_to(a, axis, longest, fill) for a in arrays]
            merged[name] = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        return merged

    def split(self, outputs: Feed, parts: Sequence[tuple[int, dict[str, int]]]) -> list[Feed]:
        """A batch's outputs cut back into each feed's rows and lengths.

        Args:
            outputs: the batch's outputs, batch-first.
            parts: each feed's rows and :meth:`lengths`, in batch order.
        """
        owns: list[Feed] = []
        start = 0
        for n, lengths in parts:
            own: Feed = {}
            for name, array in outputs.items():
                part = array[start : start + n]
                axis = self.outputs.get(name)
                if axis is not None:
                    length = next(iter(lengths.values()))
                    part = np.take(part, np.arange(length), axis=axis)
                own[name] = part
            start += n
            owns.append(own)
        return owns


class SameShapeBatches:
    """For tasks whose batches hold inputs of one shape (images): nothing to pad."""

    @staticmethod
    def padding(manifest: Manifest) -> Padding:
        """Inputs of one batch share a shape: nothing to pad."""
        return Padding()


def rows_of(feed: Feed) -> int:
    """The batch size of a feed, which all its inputs must agree on."""
    sizes = {a.shape[0] for a in feed.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs disagree on batch size: {sorted(sizes)}")
    return int(sizes.pop())


def pad_to(array: np.ndarray, axis: int, length: int, fill: float | bool) -> np.ndarray:
    """``array`` filled with ``fill`` to ``length`` along ``axis``."""
    missing = length - array.shape[axis]
    if missing == 0:
        return array
    shape = list(array.shape)
    shape[axis] = missing
    return np.concatenate([array, np.full(shape, fill, dtype=array.dtype)], axis=axis)
