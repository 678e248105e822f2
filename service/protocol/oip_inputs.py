"""Open Inference Protocol input tensors, decoded and checked against a model's manifest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.protocol.oip import DATATYPES, datatype, dims
from service.runtime.manifest import Manifest


def decode_inputs(manifest: Manifest, inputs: Any, binary: bytes) -> dict[str, np.ndarray]:
    """Protocol input tensors as a batch-first feed, checked against the manifest.

    Inputs with a ``default`` (e.g. ``band_mean``) may be left out when the
    first input is given; the feed then lacks them and the caller fills them.

    Args:
        manifest: the model's manifest (input names, dtypes, shapes).
        inputs: the request's ``inputs`` list.
        binary: the bytes after the JSON header, consumed in input order.

    Raises:
        InvalidInput: a missing or unknown input, a wrong datatype, shape or size.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs: give one tensor per model input")
    specs = {t.name: t for t in manifest.tensors}
    feed: dict[str, np.ndarray] = {}
    offset = 0
    symbols: dict[str, tuple[int, str]] = {}
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("inputs: each tensor needs a name, shape and datatype")
        name = item["name"]
        if name not in specs:
            raise InvalidInput(
                f"input {name!r} is not an input of model {manifest.name}; "
                f"it takes {', '.join(specs)}"
            )
        if name in feed:
            raise InvalidInput(f"input {name!r} is given twice")
        spec = specs[name]
        expected = datatype(spec.dtype)
        given = item.get("datatype")
        if given != expected:
            raise InvalidInput(f"input {name!r}: datatype {given} given, model takes {expected}")
        shape = _shape_of(name, item.get("shape"))
        _check_shape(manifest, name, shape, spec.shape, symbols)
        dtype = DATATYPES[expected]
        count = math.prod(shape)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary_data_size {size} exceeds the body")
            if size != count * dtype.itemsize:
                raise InvalidInput(
                    f"input {name!r}: {size} bytes of binary data for shape {shape} of "
                    f"{expected}, which needs {count * dtype.itemsize}"
                )
            array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
            array = array.astype(dtype, copy=False)
            offset += size
        else:
            array = _from_json(name, item.get("data"), dtype, count)
        feed[name] = array.reshape(shape)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    first = manifest.tensors[0].name
    missing = [
        t.name
        for t in manifest.tensors
        if t.name not in feed and not (t.default is not None and first in feed)
    ]
    if missing:
        raise InvalidInput(f"model {manifest.name} also needs input(s) {', '.join(missing)}")
    return feed


def _shape_of(name: str, raw: Any) -> list[int]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers")
    return raw


def _from_json(name: str, data: Any, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: give data (a list) or binary_data_size")
    try:
        array = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data must be a (nested) list of numbers") from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: {array.size} values given, the shape needs {count}")
    kind = array.dtype.kind
    fits = kind == "b" if dtype.kind == "b" else kind in "iuf"
    if count and not fits:
        raise InvalidInput(f"input {name!r}: data values do not match datatype {datatype(dtype)}")
    # Values beyond the datatype's range become inf here; the feed's limit check refuses them.
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype, copy=False).ravel()


def _check_shape(
    manifest: Manifest,
    name: str,
    shape: list[int],
    spec: list[int | str],
    symbols: dict[str, tuple[int, str]],
) -> None:
    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"input {name!r}: shape {shape} does not fit {dims(spec)}: {why}")

    if len(shape) != len(spec):
        raise refuse(f"{len(spec)} dimensions expected")
    multiple = manifest.input.size_multiple or 1
    for i, (got, want) in enumerate(zip(shape, spec, strict=True)):
        if isinstance(want, int):
            if got != want:
                raise refuse(f"dimension {i} must be {want}")
            continue
        if got == 0:
            raise refuse(f"dimension {i} ({want}) is empty")
        if want in ("height", "width") and got % multiple:
            raise refuse(f"{want} must be a multiple of {multiple}")
        # A symbolic dimension names the same size in every input (batch, dates).
        seen = symbols.setdefault(want, (got, name))
        if seen[0] != got:
            raise refuse(f"{want} is {got} here but {seen[0]} in input {seen[1]!r}")
