"""Float COGs written while the rows come: tiles compressed and overviews averaged as they fill.

GDAL makes a COG from a finished file only: read back, overviews built, every
tile compressed again (4.5 s of a 4096 x 4096 footprints scene's 33 s, most of
it compressing the attention bands; see bench/scene_finish.md). Here each
512 x 512 tile is compressed (deflate by libdeflate, as GDAL does, with the
floating-point predictor) once the scene has blended all its pixels, as many
tiles at once as there are usable CPUs, and its 2 x 2 average feeds the next
overview level, which does the same in turn; each level's tiles go to a file
of their own (:mod:`service.raster.cog_blocks`). Pixels of tiles not whole yet
wait in a scratch file per level, not in memory: what a sink holds does not
grow with the raster's width. Finishing is left with writing the IFDs and
appending the levels' tiles, smallest overview first: file copies.

The averages are GDAL's: NaN (nodata) left out, in double precision, each
level from the one above it. Levels halve exactly, so the raster's sides must
be multiples of the coarsest overview's factor (:func:`can_stream`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from service.raster.cog_blocks import TILE, BlockLevel, encoder_pool
from service.raster.georef import Georeference
from service.raster.tiff_layout import SHORT, Level, Tag, header, read_tags
from service.runtime.cpus import usable_cpus

# Tags copied from a one-pixel GeoTIFF GDAL writes with the same georeference
# and metadata: model pixel scale, tie point, transformation, GeoKeys and their
# parameters, GDAL's metadata (band descriptions and tags) and nodata.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
NODATA_TAG = 42113


def can_stream(width: int, height: int, levels: int) -> bool:
    """Whether every overview of ``levels`` halves the one above it exactly."""
    step = 2**levels
    return bool(width % step == 0 and height % step == 0)


class StreamedCog:
    """A float32 band stack, NaN for nodata, written in order of rows as a deflated COG.

    Args:
        path: where the COG goes.
        partial: the full-resolution tiles' file meanwhile (overview levels beside it).
        georef: the raster's georeference, copied exactly.
        descriptions: one per band.
        factors: overview factors (2, 4, ...), each twice the one before.
        level: deflate level, 1 to 9.
        band_tags: per-band metadata.
    """

    def __init__(
        self,
        path: Path,
        partial: Path,
        georef: Georeference,
        descriptions: Sequence[str],
        factors: list[int],
        level: int,
        band_tags: Sequence[Mapping[str, str]] = (),
    ) -> None:
        if not can_stream(georef.width, georef.height, len(factors)):
            raise ValueError("the raster's sides must be multiples of its coarsest overview factor")
        self.path, self.partial, self.georef, self.level = path, partial, georef, level
        self.descriptions = list(descriptions)
        self.band_tags = [dict(t) for t in band_tags]
        self.tags: dict[str, str] = {}
        bands = len(descriptions)
        self.levels = [BlockLevel(partial, bands, georef.width, georef.height, level)]
        for i, factor in enumerate(factors, start=1):
            level_path = Path(f"{partial}.ovr{i}.part")
            size = (georef.width // factor, georef.height // factor)
            self.levels.append(BlockLevel(level_path, bands, *size, level))

    def write(self, first_row: int, values: np.ndarray, first_col: int = 0) -> None:
        """Take ``(bands, rows, columns)`` values (NaN: nodata) from ``first_row, first_col``.

        Windows must not overlap. Tiles are compressed once all their pixels
        came, in row-major order, a tile per usable CPU at once; pixels never
        written are nodata.
        """
        self.levels[0].put(first_row, first_col, values)
        self._drain(everything=False)

    def _drain(self, everything: bool) -> None:
        """Compress the tiles ready at each level, feeding their averages to the next."""
        workers = encoder_pool()
        batch = usable_cpus()  # as many tiles at once as there are threads
        for i, level in enumerate(self.levels):
            below = self.levels[i + 1] if i + 1 < len(self.levels) else None
            # Tiles wait (on disk) until there are enough for every thread.
            while (ready := level.ready(everything)) >= (1 if everything else batch):
                indices = range(level.next, level.next + min(ready, batch))
                averages = [below is not None] * len(indices)
                encoded = list(workers.map(level.encode, indices, averages))
                for index, (data, reduced) in zip(indices, encoded, strict=True):
                    level.append(index, data)
                    if below is not None and reduced is not None:
                        row, col = divmod(index, level.cols)
                        below.put(row * TILE // 2, col * TILE // 2, reduced)

    def update_tags(self, **tags: str) -> None:
        """Dataset-level metadata."""
        self.tags.update(tags)

    def disk_bytes(self) -> int:
        """Disk the unfinished levels and COG take now."""
        total = sum(level.disk_bytes() for level in self.levels)  # scratch files too
        with contextlib.suppress(OSError):
            total += os.stat(self.path.with_suffix(".cog.tmp")).st_blocks * 512
        return total

    def finish(self) -> Path:
        """Write the IFDs and every level's tiles into the COG; return its path."""
        self._drain(everything=True)
        for level in self.levels:
            level.close()
        geo = self._geo_tags()
        nodata = [t for t in geo if t.tag == NODATA_TAG]
        levels = [
            Level(
                self._image_tags(lf, geo if i == 0 else nodata, overview=i > 0),
                lf.sizes,
                lf.offsets,
                lf.written,
            )
            for i, lf in enumerate(self.levels)
        ]
        head, data_at = header(levels)
        tmp = self.path.with_suffix(".cog.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(head)
                for i in reversed(range(len(levels))):
                    if out.tell() != data_at[i]:
                        raise AssertionError("COG layout miscounted")
                    with open(self.levels[i].path, "rb") as src:
                        shutil.copyfileobj(src, out, 16 * 2**20)
            tmp.replace(self.path)
        finally:
            self.remove_temporaries()
        return self.path

    def abort(self) -> None:
        """Drop everything written."""
        for level in self.levels:
            level.close()
        self.remove_temporaries()
        self.path.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """The levels' files and the unfinished COG."""
        for level in self.levels:
            level.path.unlink(missing_ok=True)
            level.scratch.unlink(missing_ok=True)
        self.path.with_suffix(".cog.tmp").unlink(missing_ok=True)

    def _geo_tags(self) -> list[Tag]:
        # GDAL writes the georeference and metadata tags; one pixel is enough.
        g = self.georef
        template = Path(f"{self.partial}.geo.part")
        profile = {
            "driver": "GTiff",
            "width": 1,
            "height": 1,
            "count": len(self.descriptions),
            "dtype": "float32",
            "nodata": float("nan"),
            "crs": rasterio.crs.CRS.from_wkt(g.crs) if g.crs else None,
            "transform": Affine(*g.transform),
        }
        try:
            with rasterio.open(template, "w", **profile) as dst:
                for i, desc in enumerate(self.descriptions, start=1):
                    dst.set_band_description(i, desc)
                for i, tags in enumerate(self.band_tags, start=1):
                    dst.update_tags(i, **tags)
                if self.tags:
                    dst.update_tags(**self.tags)
            return [t for t in read_tags(template) if t.tag in GEO_TAGS]
        finally:
            template.unlink(missing_ok=True)

    def _image_tags(self, lf: BlockLevel, extra: list[Tag], overview: bool) -> list[Tag]:
        bands = lf.bands
        side = SHORT if max(lf.width, lf.height) < 2**16 else 4
        tags = [
            Tag.of(256, side, [lf.width]),
            Tag.of(257, side, [lf.height]),
            Tag.of(258, SHORT, [32] * bands),
            Tag.of(259, SHORT, [8]),  # deflate
            Tag.of(262, SHORT, [1]),  # min is black
            Tag.of(277, SHORT, [bands]),
            Tag.of(284, SHORT, [1]),  # pixel-interleaved
            Tag.of(317, SHORT, [3]),  # floating-point predictor
            Tag.of(322, SHORT, [TILE]),
            Tag.of(323, SHORT, [TILE]),
            Tag.of(339, SHORT, [3] * bands),  # IEEE float
        ]
        if bands > 1:
            tags.append(Tag.of(338, SHORT, [0] * (bands - 1)))  # extra samples: unspecified
        if overview:
            tags.append(Tag.of(254, 4, [1]))  # reduced-resolution image
        return sorted([*tags, *extra], key=lambda t: t.tag)
