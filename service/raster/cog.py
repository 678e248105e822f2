"""Scene outputs: COGs written while the rows come, or tiled GeoTIFFs made Cloud-Optimized after.

Float outputs compressed with deflate stream (:mod:`service.raster.cog_stream`);
the others are written block by block to a partial file that GDAL makes a COG.
"""

# Partial files are sparse: a block that holds only nodata is never written, so a
# mostly empty scene takes disk for its data only (streamed tiles alike).

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling as GdalResampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.raster.cog_stream import StreamedCog, can_stream
from service.raster.gdal_env import reserve_block_cache
from service.raster.georef import Georeference
from service.runtime.cpus import usable_cpus

log = logging.getLogger(__name__)

Resampling = Literal["average", "nearest", "mode"]

# A COG's blocks and its smallest overview: overviews halve until one fits a block.
BLOCK = 512
# Below this share of blocks holding data, the COG driver makes the overviews
# from the sparse partial: prebuilt overviews in the partial (faster on full
# scenes, see finish) are written dense. On an 8192 x 8192 scene with one block
# of data: 3.3 s against 9.7 s + 1.6 s, and 66 KB of temporaries against 23 MB.
DENSE_SHARE = 0.5
# Rows of blocks a sink reserves in GDAL's process-wide block cache (see
# service.raster.gdal_env): closing a dataset writes its dirty cached blocks
# holding Python's GIL (512 MB of an 8192 x 8192 partial still cached at close
# stopped every thread for 10.4 s), so the cache is kept to a few block rows and
# GDAL writes older blocks out during the writes, which release the GIL. At most
# WRITE_CACHE_MAX_BYTES (two block rows of a 4096-wide scene's four float
# attention bands), so that memory does not grow with the scene: those of a
# 16384-wide scene are 256 MiB. Partly written blocks of wider rows are written
# out and read back instead (from the uncompressed partial file).
WRITE_CACHE_BLOCK_ROWS = 2
WRITE_CACHE_MAX_BYTES = 64 * 2**20


def overview_factors(width: int, height: int, block: int = BLOCK) -> list[int]:
    """Overview decimation factors, as the COG driver chooses them by default.

    Each level halves the previous one, until the last level's larger side
    (rounded down) is at most one block.
    """
    factors: list[int] = []
    factor = 2
    while max(width, height) // (factor // 2) > block:
        factors.append(factor)
        factor *= 2
    return factors


def _build_overviews(path: str, factors: list[int], resampling: str) -> None:
    # A child process of its own: its cache size is no other thread's business (bytes).
    env = {"GDAL_CACHEMAX": 256 * 2**20, "GDAL_NUM_THREADS": str(usable_cpus())}
    with rasterio.Env(**env), rasterio.open(path, "r+") as dst:
        dst.build_overviews(factors, GdalResampling[resampling])


def _overviews_in_child(path: Path, factors: list[int], resampling: str) -> None:
    """Build a file's overviews in a child process."""
    # GDAL's overview builder holds Python's GIL for the whole build, which would
    # stop the server's event loop for seconds; the COG driver's copy does not.
    context = multiprocessing.get_context("forkserver")
    child = context.Process(
        target=_build_overviews, args=(str(path), factors, resampling), daemon=True
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"building overviews failed (exit code {child.exitcode})")


class RasterSink:
    """A band stack written in row blocks to a tiled GeoTIFF, finished as a COG.

    Float outputs compressed with deflate are written as a COG while their rows
    come (:mod:`service.raster.cog_stream`) where every overview halves the
    level above it exactly; the others go to an uncompressed partial file that
    finishing makes into a COG with GDAL's COG driver.

    Float outputs in ``[0, 1]`` can be stored as uint8 (0-255 = 0-1) with an
    internal mask for nodata; otherwise float32 with NaN nodata. Class rasters
    are uint8 with a nodata value.

    Args:
        path: where the final COG goes (a ``.partial.tif`` sibling is used meanwhile).
        georef: the input's georeference, copied exactly.
        descriptions: one per band.
        dtype: ``float32`` or ``uint8``.
        scaled: uint8 holds ``round(value * 255)`` of values in [0, 1].
        nodata: nodata value for unscaled uint8 (class rasters).
        band_tags: per-band metadata (e.g. ``DATE``).
        resampling: overview resampling (``average`` for continuous values,
            ``nearest``/``mode`` for classes).
        compress: the COG's codec, ``deflate`` or ``zstd``.
        level: its level (1, the fastest, to 9).
        colormap: RGBA colour of each value of a one-band class raster: its
            colour table, which GIS tools draw it with.
        stream: write the COG while the rows come where the output allows it
            (False: always from a partial file at the end, as for the others).

    ``seconds`` adds up the wall seconds of each step: ``write`` (streamed:
    compression and overviews included), then ``overviews`` and ``cog`` (GDAL's)
    or ``assemble`` (streamed).
    """

    def __init__(
        self,
        path: Path,
        georef: Georeference,
        descriptions: Sequence[str],
        *,
        dtype: str = "float32",
        scaled: bool = False,
        nodata: float | None = None,
        band_tags: Sequence[dict[str, str]] | None = None,
        resampling: Resampling = "average",
        compress: str = "deflate",
        level: int = 1,
        colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
        stream: bool = True,
    ) -> None:
        if dtype not in ("float32", "uint8") or compress not in ("deflate", "zstd"):
            raise ValueError("dtype must be float32 or uint8, compress deflate or zstd")
        if not 1 <= level <= 9:
            raise ValueError("level must be 1 to 9")
        self.path = path
        self.partial = path.with_suffix(".partial.tif")
        self.dtype = dtype
        self.scaled = scaled
        self.resampling = resampling
        self.compress = compress
        self.level = level
        self.count = len(descriptions)
        self._stream: StreamedCog | None = None
        self.seconds: dict[str, float] = {"write": 0.0}
        self._blocks = -(-georef.height // BLOCK) * -(-georef.width // BLOCK)
        self._data_blocks: set[tuple[int, int]] = set()
        factors = overview_factors(georef.width, georef.height)
        if (
            stream
            and dtype == "float32"
            and compress == "deflate"
            and can_stream(georef.width, georef.height, len(factors))
        ):
            self._stream = StreamedCog(
                path, self.partial, georef, descriptions, factors, level, band_tags or ()
            )
            return
        use_mask = dtype == "uint8" and scaled
        if dtype == "float32":
            nodata = float("nan")
        profile = {
            "driver": "GTiff",
            "width": georef.width,
            "height": georef.height,
            "count": self.count,
            "dtype": dtype,
            "crs": rasterio.crs.CRS.from_wkt(georef.crs) if georef.crs else None,
            "transform": Affine(*georef.transform),
            "nodata": None if use_mask else nodata,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            # Float bands band-interleaved: the COG of a 4096 x 4096 scene's 4
            # attention bands was finished in 1.7-1.8 s instead of 2.9-3.1 s from
            # a pixel-interleaved partial (the same full-resolution values;
            # overviews below 1/2 may differ in the last bit). Masked uint8 stays
            # pixel-interleaved: GDAL averages its overviews differently then.
            "interleave": "band" if dtype == "float32" else "pixel",
            # The partial file is read back whole (more than once, for overviews)
            # to make the COG: uncompressed, that conversion takes 2.5x less time
            # than from a deflated partial, for about the same disk space on
            # float outputs.
            "BIGTIFF": "IF_SAFER",
            # Blocks never written (or all nodata) take no disk and read as nodata;
            # without it GDAL also fills every unwritten block when the file is
            # closed, which took 65 s for a cancelled 30000 x 30000 job.
            "SPARSE_OK": "TRUE",
        }
        self._use_mask = use_mask
        self._nodata = nodata
        itemsize = np.dtype(dtype).itemsize
        rows_bytes = georef.width * self.count * itemsize * BLOCK * WRITE_CACHE_BLOCK_ROWS
        reserve_block_cache(min(rows_bytes, WRITE_CACHE_MAX_BYTES))
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            self._dst = rasterio.open(self.partial, "w", **profile)
        for i, desc in enumerate(descriptions, start=1):
            self._dst.set_band_description(i, desc)
        for i, tags in enumerate(band_tags or [], start=1):
            self._dst.update_tags(i, **tags)
        if colormap:
            self._dst.write_colormap(1, dict(colormap))
        if scaled:
            self._dst.update_tags(SCALE="1/255", VALUES="uint8 0-255 stands for 0-1")

    def write(self, first_row: int, block: np.ndarray, first_col: int = 0) -> None:
        """Write ``(count, rows, columns)`` values (NaN = nodata) from ``first_row, first_col``."""
        began = time.perf_counter()
        try:
            self._write(first_row, block, first_col)
        finally:
            self.seconds["write"] += time.perf_counter() - began

    def _write(self, first_row: int, block: np.ndarray, first_col: int) -> None:
        rows = block.shape[1]
        window = Window(first_col, first_row, block.shape[2], rows)
        # Band by band: a mask of the whole block at once takes a byte per value.
        valid = np.isfinite(block[0])
        for band in block[1:]:
            valid &= np.isfinite(band)
        if not valid.any():
            if self._stream is not None:
                # Nodata is what a block starts with: only the pixels are counted.
                self._stream.write(first_row, block, first_col)
            return  # unwritten blocks read as nodata
        self._note_data(first_row, first_col, valid)
        if self._stream is not None:
            self._stream.write(first_row, block, first_col)
        elif self.dtype == "uint8" and self.scaled:
            out = np.clip(np.nan_to_num(block) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            self._dst.write(out, window=window)
            self._dst.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)
        elif self.dtype == "uint8":
            fill = 255 if self._nodata is None else self._nodata
            out = np.where(np.isfinite(block), block, fill).astype(np.uint8)
            self._dst.write(out, window=window)
        else:
            self._dst.write(block.astype(np.float32, copy=False), window=window)

    def _note_data(self, first_row: int, first_col: int, valid: np.ndarray) -> None:
        """Remember which file blocks hold data (to choose how to finish)."""
        rows = range(first_row // BLOCK, (first_row + valid.shape[0] - 1) // BLOCK + 1)
        last_col = first_col + valid.shape[1]
        for col in range(first_col // BLOCK, (last_col - 1) // BLOCK + 1):
            lo, hi = max(col * BLOCK, first_col), min((col + 1) * BLOCK, last_col)
            if valid[:, lo - first_col : hi - first_col].any():
                self._data_blocks.update((row, col) for row in rows)

    @property
    def streamed(self) -> bool:
        """Whether the COG is written while the rows come (else: from a partial file at the end)."""
        return self._stream is not None

    @property
    def data_share(self) -> float:
        """Share of the raster's blocks that hold data so far."""
        return len(self._data_blocks) / max(1, self._blocks)

    def disk_bytes(self) -> int:
        """Disk the unfinished files take now (allocated blocks, not apparent size)."""
        if self._stream is not None:
            return self._stream.disk_bytes()
        total = 0
        for path in (self.partial, self.path.with_suffix(".cog.tmp")):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_blocks * 512
        return total

    def finish_bytes(self) -> int:
        """Disk finishing adds to :meth:`disk_bytes`.

        A streamed COG copies its levels' tiles into the COG (as much again); GDAL's
        overviews and COG beside a partial are counted as half as much again.
        """
        used = self.disk_bytes()
        return used if self._stream is not None else used // 2

    def update_tags(self, **tags: str) -> None:
        """Dataset-level metadata."""
        if self._stream is not None:
            self._stream.update_tags(**tags)
        else:
            self._dst.update_tags(**tags)

    def finish(self) -> Path:
        """Close, convert to a Cloud-Optimized GeoTIFF with overviews, and return its path."""
        # The overviews are built in the (uncompressed) partial file first and the
        # COG driver copies them: left to build them itself it takes several times
        # as long for the same overview pixels.
        if self._stream is not None:
            began = time.perf_counter()
            path = self._stream.finish()
            self.seconds["assemble"] = time.perf_counter() - began
            self._log_seconds()
            return path
        began = time.perf_counter()
        width, height = self._dst.width, self._dst.height
        self._dst.close()
        factors = overview_factors(width, height)
        if factors and self.data_share >= DENSE_SHARE:
            _overviews_in_child(self.partial, factors, self.resampling)
        self.seconds["overviews"] = time.perf_counter() - began
        began = time.perf_counter()
        options = {
            "BLOCKSIZE": BLOCK,
            "COMPRESS": self.compress.upper(),
            # The fastest level of either codec by default. On a 4096 x 4096 scene's
            # 4 float attention bands (with the floating-point predictor), deflate
            # level 1 wrote the COG in 1.6 s against 2.6 s at GDAL's default level
            # 6, and the file came out 0.7% smaller; zstd level 1: 0.7 s against
            # 3.3 s at level 9, 4% larger. Level 1 files decode like any others.
            "LEVEL": self.level,
            "OVERVIEWS": "AUTO",
            "RESAMPLING": self.resampling.upper(),
            "OVERVIEW_RESAMPLING": self.resampling.upper(),
            "BIGTIFF": "IF_SAFER",
            # Blocks of nodata only are left out (GDAL reads them as nodata, and
            # the file still validates as a COG): an empty 8192 x 8192 float
            # band was finished in 3.3 s instead of 12.7 s.
            "SPARSE_OK": "TRUE",
            # GDAL's ALL_CPUS counts the host's cores, not a container's quota.
            "NUM_THREADS": str(usable_cpus()),
        }
        if self.dtype == "float32":
            options["PREDICTOR"] = "FLOATING_POINT"
        tmp = self.path.with_suffix(".cog.tmp")
        try:
            rasterio.shutil.copy(self.partial, tmp, driver="COG", **options)
            tmp.replace(self.path)
            self.seconds["cog"] = time.perf_counter() - began
        except BaseException:
            self._remove_temporaries()
            raise
        self.partial.unlink(missing_ok=True)
        self._log_seconds()
        return self.path

    def _log_seconds(self) -> None:
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        how = "streamed" if self._stream is not None else "from its partial file"
        log.info("%s finished %s: %s", self.path.name, how, steps)

    def abort(self) -> None:
        """Drop everything written (blocking file I/O: call it off the event loop)."""
        if self._stream is not None:
            self._stream.abort()
            return
        if not self._dst.closed:
            self._dst.close()
        self._remove_temporaries()
        self.path.unlink(missing_ok=True)

    def _remove_temporaries(self) -> None:
        tmp = self.path.with_suffix(".cog.tmp")
        for path in (self.partial, tmp, Path(f"{tmp}.ovr.tmp"), Path(f"{self.partial}.ovr")):
            path.unlink(missing_ok=True)


def read_band(
    dataset: DatasetReader,
    index: int,
    categorical: bool,
    window: Window | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """One band of a :class:`RasterSink` COG as ``(h, w)`` float32, NaN where nodata.

    A uint8 band of a continuous layer holds 0-255 for 0-1 and is scaled back;
    a categorical (class) band keeps its codes. ``out_shape`` decimates with
    nearest-neighbour sampling.
    """
    values = dataset.read(
        index, window=window, out_shape=out_shape, masked=True, resampling=GdalResampling.nearest
    )
    out: np.ndarray = values.astype(np.float32).filled(np.nan)
    if dataset.dtypes[index - 1] == "uint8" and not categorical:
        out /= 255.0
    return out
