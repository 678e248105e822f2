"""GDAL's own defences, as the server process sets them up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Opens a VRT from memory with no driver restriction, after (or without) the
# server's process-wide hardening; prints what GDAL made of it.
_PROBE = """
import sys, warnings
warnings.simplefilter("ignore")
from rasterio.io import MemoryFile
import rasterio
from service.raster.gdal_env import HARDENED_GDAL, disable_risky_drivers
if sys.argv[1] == "hardened":
    disable_risky_drivers()
with rasterio.Env():  # something else in the process touched GDAL first
    pass
with rasterio.Env(**HARDENED_GDAL), MemoryFile(sys.stdin.buffer.read(), ext=".vrt") as m:
    try:
        with m.open() as ds:
            print("opened", ds.driver)
    except rasterio.errors.RasterioIOError:
        print("refused")
"""


def _open_vrt(mode: str, source: Path) -> str:
    vrt = (
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1">'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    # In-process app tests set GDAL_SKIP in this interpreter's environment; the
    # probe starts from a clean one so the control means what it says.
    env = {k: v for k, v in os.environ.items() if k != "GDAL_SKIP"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        input=vrt.encode(),
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=60,
        check=True,
    )
    return proc.stdout.decode().strip()


def test_the_server_process_cannot_open_vrt_even_without_a_driver_allowlist(
    shared_data: Path,
) -> None:
    # The control: HARDENED_GDAL around the open alone does not skip VRT once GDAL has
    # registered its drivers; the process-wide setting does.
    assert _open_vrt("plain", shared_data / "RGB.byte.tif") == "opened VRT"
    assert _open_vrt("hardened", shared_data / "RGB.byte.tif") == "refused"
