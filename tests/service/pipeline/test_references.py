"""Reading references: ranged GETs from a real HTTP server and a real S3 server, within limits."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import obstore
import pytest
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

from service.errors import Forbidden, InvalidInput, InvalidRaster, PayloadTooLarge
from service.jobs.objects import connect
from service.pipeline.references import References, open_reference, read_all
from service.pipeline.scene_read import open_scene
from tests.helpers.objectstore import SeaweedS3
from tests.helpers.ranged_http import RangedServer, ranged_server, self_signed
from tests.helpers.scenes import tile_scene


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A large tiled GeoTIFF of real imagery (8192 x 8192, JPEG) and a small one."""
    root = tmp_path_factory.mktemp("remote")
    tile_scene(shared_data / "cogeo.tif", 8, root / "large.tif")
    (root / "small.tif").write_bytes((shared_data / "cogeo.tif").read_bytes())
    (root / "text.tif").write_bytes(b"not a GeoTIFF at all")
    return root


@pytest.fixture(scope="module")
def http(root: Path) -> Iterator[RangedServer]:
    """``root`` on an HTTP server that honours Range."""
    with ranged_server(root) as server:
        yield server


def _window_read(references: References, url: str) -> tuple[int, np.ndarray]:
    source = references.source(url)
    with open_reference(source) as dataset:
        data = dataset.read(window=Window(2048, 2048, 512, 512))
    return source.read_bytes, data


def test_a_window_of_a_large_cog_reads_a_small_fraction_of_it(
    http: RangedServer,
    root: Path,
    seaweed: tuple[SeaweedS3, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in seaweed[0].env().items():
        monkeypatch.setenv(key, value)
    prefix = f"s3://{seaweed[1]}/window-{secrets.token_hex(4)}"
    obstore.put(connect(prefix), "large.tif", (root / "large.tif").read_bytes())
    size = (root / "large.tif").stat().st_size
    with rasterio.open(root / "large.tif") as src:
        expected = src.read(window=Window(2048, 2048, 512, 512))
    references = References([http.url, f"{prefix}/"], 10, 2**40)
    for url in (f"{http.url}large.tif", f"{prefix}/large.tif"):
        sent = http.sent
        read, data = _window_read(references, url)
        np.testing.assert_array_equal(data, expected)
        print(f"{url.split(':')[0]}: {read} of {size} bytes ({100 * read / size:.2f}%)")
        assert read < 0.03 * size
        if url.startswith("http"):
            assert http.sent - sent == read


def test_scene_reader_opens_a_reference_path(http: RangedServer, root: Path) -> None:
    references = References([http.url], 10, 2**40)
    with open_scene(references.path(f"{http.url}small.tif")) as dataset:
        data = dataset.read(1, window=Window(0, 0, 64, 64))
    with rasterio.open(root / "small.tif") as src:
        np.testing.assert_array_equal(data, src.read(1, window=Window(0, 0, 64, 64)))


def test_a_scene_input_is_fetched_once_for_all_its_passes_within_one_budget(
    http: RangedServer, root: Path
) -> None:
    size = (root / "small.tif").stat().st_size
    path = References([http.url], 10, size * 3 // 2).path(f"{http.url}small.tif")
    for _ in range(3):
        with open_scene(path) as dataset:
            dataset.read()
    assert size <= path.fs.budget.read_bytes < size * 3 // 2
    tight = References([http.url], 10, size // 2).path(f"{http.url}small.tif")
    with pytest.raises((RasterioError, InvalidRaster)), open_scene(tight) as dataset:
        dataset.read()
    assert isinstance(tight.fs.error, PayloadTooLarge)  # what the job's failure reports


def test_redirects_inside_the_allowlist_are_followed(http: RangedServer, root: Path) -> None:
    references = References([http.url], 10, 2**40)
    data = read_all(references.source(f"{http.url}redirect?to=/small.tif"), 2**30)
    assert data == (root / "small.tif").read_bytes()


def test_byte_budget_and_whole_reads(http: RangedServer) -> None:
    tight = References([http.url], 10, 100_000)
    with pytest.raises(PayloadTooLarge, match="ATTNSERVE_INPUT_MAX_READ_MB"):
        read_all(tight.source(f"{http.url}small.tif"), 2**30)
    # Larger than asked for: not read whole, after one GET.
    assert read_all(References([http.url], 10, 2**40).source(f"{http.url}large.tif"), 10) is None


def test_unreadable_references_are_clear_4xx(http: RangedServer) -> None:
    references = References([http.url], 10, 2**40)
    with pytest.raises(InvalidInput, match="HTTP 404"):
        read_all(references.source(f"{http.url}missing.tif"), 2**30)
    with pytest.raises(InvalidInput, match="HTTP 404"):
        read_all(references.source(f"{http.url}redirect?to=/missing.tif"), 2**30)
    with (
        pytest.raises(InvalidRaster, match="could not be opened as a GeoTIFF"),
        open_reference(references.source(f"{http.url}text.tif")),
    ):
        pass
    with pytest.raises(Forbidden):
        references.source("http://10.0.0.1/x.tif")


@pytest.fixture
def silent() -> Iterator[int]:
    """A listener that accepts connections and never answers; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


def test_a_server_that_never_answers_times_out(silent: int) -> None:
    references = References([f"http://127.0.0.1:{silent}/"], 0.5, 2**40)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="timed out"):
        read_all(references.source(f"http://127.0.0.1:{silent}/x.tif"), 2**30)
    assert time.monotonic() - started < 5


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_is_verified_for_the_host_while_connecting_to_the_checked_address(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    with ranged_server(root, tls=(cert, key)) as server:
        references = References([server.url], 10, 2**40)
        url = f"{server.url}small.tif"
        with pytest.raises(InvalidInput, match="could not be read"):
            read_all(references.source(url), 2**30)  # a certificate no one vouches for
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert read_all(references.source(url), 2**30) == (root / "small.tif").read_bytes()
