"""GDAL reads of a job's stored rasters through the store, wherever it keeps them."""

from __future__ import annotations

import contextlib
import posixpath
import secrets
from collections.abc import Iterator
from typing import Any

import rasterio
from rasterio.io import DatasetReader

from service.jobs.record import JobRecord
from service.jobs.store import JobStore, StoredFile


@contextlib.contextmanager
def open_raster(
    store: JobStore, record: JobRecord, name: str, **kwargs: Any
) -> Iterator[DatasetReader]:
    """A job's stored raster ``name``, open for reading (``kwargs`` go to ``rasterio.open``).

    GDAL reads it through :meth:`JobStore.open_file`, so only the parts it asks
    for are read. Raises NotFound when the job or the file is gone.
    """
    first = store.open_file(record, name)
    spare = [first]

    def opener(path: str, mode: str = "rb", **_: Any) -> StoredFile:
        # GDAL also asks for side files (.aux.xml, .ovr, .msk): a job has none.
        if posixpath.basename(path) != name or "w" in mode:
            raise FileNotFoundError(path)
        return spare.pop() if spare else store.open_file(record, name)

    # A name of its own per open: rasterio keeps one opener per name at a time.
    urlpath = f"{record.id}/{secrets.token_hex(8)}/{name}"
    try:
        with rasterio.open(urlpath, opener=opener, **kwargs) as dataset:
            yield dataset
    finally:
        for unused in spare:
            unused.close()
