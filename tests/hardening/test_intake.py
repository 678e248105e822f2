"""Intake against a live server: memory bounded per request, georeferences, alpha, values.

Each hostile upload is small on the wire and would once have cost gigabytes or
a 500; here each gets its answer (a 4xx naming the limit, a scene job, or a
result served without an unusable georeference) before anything large is
decoded.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import rasterio
from rasterio.transform import Affine

from tests.helpers.bodies import v2_gzip_zeros
from tests.helpers.geotiff import UTM, geotiff, noise
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import LiveServer, serving

LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
TMERC_DEGENERATE = "+proj=tmerc +lat_0=0 +lon_0=3 +k=1e-9 +x_0=500000 +y_0=0 +ellps=WGS84"


def zeros_geotiff(size: int, bands: int = 3, dtype: str = "uint8", **profile: object) -> bytes:
    """A large, highly compressible GeoTIFF of zeros (a few KB on the wire)."""
    profile = {"compress": "zstd", "tiled": True, "blockxsize": 512, "blockysize": 512, **profile}
    return geotiff(np.zeros((bands, size, size), dtype), **profile)


def corrupt_geotiff(bands: int, dtype: str = "uint16") -> bytes:
    """A GeoTIFF whose header opens but whose pixel data cannot be decoded."""
    data = np.full((bands, 256, 256), 1000, dtype)
    raw = bytearray(geotiff(data, compress="deflate", tiled=True, blockxsize=256))
    # Deflate streams start right after the header; overwrite the middle of the file.
    middle = len(raw) // 2
    raw[middle : middle + 256] = b"\xff" * 256
    return bytes(raw)


def hwm_mib(server: LiveServer) -> int:
    """The server process's peak resident memory since the last reset, in MiB."""
    with open(f"/proc/{server.proc.pid}/status") as f:
        status = f.read()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1)) // 1024


def reset_hwm(server: LiveServer) -> None:
    """Start measuring the server's peak resident memory from now."""
    with open(f"/proc/{server.proc.pid}/clear_refs", "w") as f:
        f.write("5")


# One request's memory in these tests: a 1024 x 1024 footprints image fits, a
# 2048 x 2048 one does not, whatever the shipped model's measured working memory.
REQUEST_MEMORY_MB = "512"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: object) -> Iterator[LiveServer]:
    """One live server for every case here."""
    tmp = tmp_path_factory.mktemp("intake")
    with serving(model_dir, tmp, request_memory_mb=REQUEST_MEMORY_MB) as live:
        yield live


def predict(server: LiveServer, image: bytes, **fields: str) -> httpx.Response:
    """``POST /predict`` with one image part."""
    fields.setdefault("model", "footprints")
    return httpx.post(
        f"{server.url}/predict", data=fields, files={"image": ("x.tif", image)}, timeout=120
    )


@pytest.mark.parametrize(
    ("crs", "transform", "why"),
    [
        (LOCAL_CS, None, "local or engineering CRS"),
        (TMERC_DEGENERATE, None, "projection"),
        (UTM, Affine(1e-300, 0, 500000, 0, -1e-300, 4000000), "pixel size 1e-300"),
        (UTM, Affine(1e300, 0, 500000, 0, -1e300, 4000000), "pixel size 1e+300"),
        (UTM, Affine(float("nan"), 0, 500000, 0, -0.5, 4000000), "non-finite"),
    ],
    ids=["local_cs", "tmerc_k_1e-9", "pixel_1e-300", "pixel_1e300", "nan_scale"],
)
def test_unusable_georeference_is_dropped_with_a_warning(
    server: LiveServer, crs: str, transform: Affine | None, why: str
) -> None:
    resp = predict(server, geotiff(noise(), crs=crs, transform=transform))
    assert resp.status_code == 200, resp.text
    georef = resp.json()["georeference"]
    assert georef["crs"] is None
    assert all(np.isfinite(georef["transform"]))
    assert why in georef["warnings"][0]
    assert "not georeferenced" in georef["warnings"][0]
    job = resp.json()["job_id"]
    for query in ("", "?crs=native"):
        shapes = httpx.get(f"{server.url}/jobs/{job}/footprints{query}", timeout=60)
        assert shapes.status_code == 200, shapes.text
        assert shapes.json()["type"] == "FeatureCollection"
    tif = httpx.get(f"{server.url}/jobs/{job}/prediction?format=geotiff", timeout=60)
    assert tif.status_code == 200
    with rasterio.MemoryFile(tif.content) as mem, mem.open() as ds:
        assert ds.crs is None


def test_a_usable_georeference_is_kept_without_warning(server: LiveServer) -> None:
    georef = predict(server, geotiff(noise())).json()["georeference"]
    assert georef["crs"] == UTM
    assert georef["transform"] == [0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0]
    assert "warnings" not in georef


def test_alpha_band_is_the_validity_mask(server: LiveServer) -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 200, (4, 64, 64)).astype("uint8")
    rgba[3] = 255
    rgba[3, :, :16] = 0  # a quarter transparent, as a web export's edge
    image = geotiff(rgba, photometric="RGB", alpha="YES")
    resp = predict(server, image)
    assert resp.status_code == 200, resp.text
    stats = resp.json()["prediction"]["layers"][0]["statistics"]
    assert stats["valid_fraction"] == 0.75
    tif = httpx.get(f"{server.url}/jobs/{resp.json()['job_id']}/prediction?format=geotiff")
    with rasterio.MemoryFile(tif.content) as mem, mem.open() as ds:
        probability = ds.read(1)
    assert np.isnan(probability[:, :16]).all()
    assert np.isfinite(probability[:, 16:]).all()
    # The same pixels as RGB with an internal mask give the same prediction.
    masked = predict(server, masked_geotiff(rgba))
    assert masked.status_code == 200
    assert masked.json()["prediction"]["layers"][0]["statistics"] == stats


def masked_geotiff(rgba: np.ndarray) -> bytes:
    """RGB GeoTIFF bytes with ``rgba[3]`` as its internal mask."""
    return geotiff(rgba[:3], mask=rgba[3])


def test_four_data_bands_still_do_not_fit_a_three_band_model(server: LiveServer) -> None:
    # GDAL calls a plain 4-band byte GeoTIFF RGBA; these four are data bands.
    resp = predict(server, geotiff(noise(4), photometric="MINISBLACK"))
    assert resp.status_code == 422
    assert "band count 4 does not match" in resp.json()["error"]["message"]


def test_huge_internal_blocks_are_refused_before_decoding(server: LiveServer) -> None:
    image = zeros_geotiff(64, blockxsize=16384, blockysize=16384, compress="zstd")
    assert len(image) < 100_000
    reset_hwm(server)
    base = hwm_mib(server)
    resp = predict(server, image)
    assert resp.status_code == 413
    assert "internal blocks" in resp.json()["error"]["message"]
    assert "768 MiB" in resp.json()["error"]["message"]
    assert hwm_mib(server) - base < 200


def test_v2_refuses_a_declared_huge_tensor_before_inflating_it(server: LiveServer) -> None:
    for side, limit in ((4096, "ATTNSERVE_MAX_SYNC_PIXELS"), (2048, "ATTNSERVE_REQUEST_MEMORY")):
        body, headers = v2_gzip_zeros("image", [1, 3, side, side], level=1)
        reset_hwm(server)
        base = hwm_mib(server)
        started = time.monotonic()
        resp = httpx.post(
            f"{server.url}/v2/models/footprints/infer",
            content=body,
            headers=headers,
            timeout=60,
        )
        assert resp.status_code == 413, resp.text
        assert limit in resp.json()["error"]
        assert time.monotonic() - started < 10
        assert hwm_mib(server) - base < 100  # never inflated


def test_large_uploads_run_as_scene_jobs_with_tiles_the_budget_allows(
    start_server: Callable[..., LiveServer],
) -> None:
    # Its own server: the jobs started here hold their share of the budget. 1 GiB a
    # request: footprints 2.2.0 works with about 650 bytes per pixel.
    server = start_server(request_memory_mb="1024")
    # 1024 x 1024 fits one request's memory and is answered at once.
    assert predict(server, geotiff(noise(size=1024))).status_code == 200
    # 2048 x 2048 is within ATTNSERVE_MAX_SYNC_PIXELS, but the whole image through
    # the model needs more memory than one request may hold: it is tiled instead.
    resp = predict(server, zeros_geotiff(2048))
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "queued"
    assert httpx.delete(f"{server.url}/jobs/{resp.json()['job_id']}").status_code in (200, 204)
    # A tile size whose tiles in flight would not fit is refused, naming one that does.
    scene = zeros_geotiff(4096)
    assert len(scene) < 20_000
    resp = predict(server, scene, tile_size="4096", **{"async": "true"})
    assert resp.status_code == 413
    error = resp.json()["error"]
    assert "ATTNSERVE_REQUEST_MEMORY_MB" in error["message"]
    fits = error["detail"]["max_tile_size"]
    assert 64 <= fits < 4096
    assert f"use a tile_size of at most {fits}" in error["message"]
    ok = predict(server, scene, tile_size=str(fits), **{"async": "true"})
    assert ok.status_code == 202, ok.text
    assert httpx.delete(f"{server.url}/jobs/{ok.json()['job_id']}").status_code in (200, 204)


def test_a_large_upload_is_spooled_to_disk_not_held_in_memory(
    start_server: Callable[..., LiveServer], tmp_path: Path, redis_server: RedisServer
) -> None:
    # A 147 MiB uncompressed scene posted as a job: the server's peak memory
    # while taking it grows by a small part of the file (it was read whole into
    # memory once, and grew by more than its size), the job keeps its input,
    # and no spooled file outlives the request. The job only queues (on a
    # shared queue no replica here takes from), so its tiles add nothing.
    server = start_server(queue_url=redis_server.url, scene_workers="0")
    scene = tmp_path / "scene.tif"
    side = 7168
    with rasterio.open(
        scene,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=3,
        dtype="uint8",
        crs="EPSG:32640",
        transform=Affine(0.5, 0, 500000, 0, -0.5, 2800000),
        tiled=True,
        blockxsize=512,
        blockysize=512,
    ) as ds:
        ds.write(np.full((3, side, side), 7, np.uint8))
    size_mib = scene.stat().st_size / 2**20
    assert size_mib > 140
    before = (server.rss_kib() or 0) // 1024
    reset_hwm(server)
    with open(scene, "rb") as f:
        resp = httpx.post(
            f"{server.url}/predict",
            data={"model": "footprints", "async": "true"},
            files={"image": ("scene.tif", f)},
            timeout=300,
        )
    assert resp.status_code == 202, resp.text
    grew = hwm_mib(server) - before
    assert grew < size_mib / 3, f"peak grew {grew} MiB taking a {size_mib:.0f} MiB upload"
    job = resp.json()["job_id"]
    stored = next(tmp_path.rglob(f"{job}/input_0.tif"))
    assert stored.stat().st_size == scene.stat().st_size
    assert not list(tmp_path.rglob("upload-*"))
    assert httpx.delete(f"{server.url}/jobs/{job}").status_code in (200, 204)


def test_dated_stacks_are_checked_from_headers_before_any_part_is_decoded(
    server: LiveServer,
) -> None:
    # The second part cannot be decoded; the date count is wrong. Headers first:
    # the answer names the dates, not the damage.
    good = geotiff(np.full((10, 256, 256), 1000, "uint16"))
    parts = [("image", ("a.tif", good)), ("image", ("b.tif", corrupt_geotiff(10)))]
    resp = httpx.post(
        f"{server.url}/predict",
        data={"model": "crops", "dates": "2024-04-01,2024-05-01,2024-06-01"},
        files=parts,
        timeout=60,
    )
    assert resp.status_code == 422
    assert "3 dates given for 2 dated images" in resp.json()["error"]["message"]
    # A part of another size is refused before the first is read, too.
    other = geotiff(np.full((10, 128, 128), 1000, "uint16"))
    resp = httpx.post(
        f"{server.url}/predict",
        data={"model": "crops", "dates": "2024-04-01,2024-05-01"},
        files=[("image", ("a.tif", corrupt_geotiff(10))), ("image", ("b.tif", other))],
        timeout=60,
    )
    assert resp.status_code == 422
    assert "same size" in resp.json()["error"]["message"]


def test_dates_field_of_nested_brackets_is_a_422(server: LiveServer) -> None:
    stack = geotiff(np.full((10, 32, 32), 1000, "uint16"))
    for dates in ("[" * 100_000, "[" * 2_000 + "]" * 2_000):
        resp = predict(server, stack, model="crops", dates=dates)
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["message"].startswith("dates:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"days": [1e39], "parcels": [{"series": [[1000.0] * 10]}]}, "days"),
        ({"days": [10.0], "parcels": [{"series": [[1e39] * 10]}]}, "parcels.0.series"),
    ],
)
def test_predict_refuses_values_beyond_float32(
    server: LiveServer, body: dict[str, object], field: str
) -> None:
    resp = httpx.post(f"{server.url}/predict", json={"model": "crops", **body})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith(field)


def infer_crops(server: LiveServer, days: list[float], valid: list[bool]) -> httpx.Response:
    """``/v2`` crops inference of one series with ``days`` and ``valid``."""
    t = len(days)
    body = {
        "inputs": [
            {"name": "series", "shape": [1, t, 10], "datatype": "FP32", "data": [900.0] * t * 10},
            {"name": "days", "shape": [1, t], "datatype": "FP32", "data": days},
            {"name": "valid", "shape": [1, t], "datatype": "BOOL", "data": valid},
        ]
    }
    return httpx.post(f"{server.url}/v2/models/crops/infer", json=body, timeout=60)


def test_v2_obeys_the_limits_of_predict(server: LiveServer) -> None:
    resp = infer_crops(server, [1e39, 30.0], [True, True])
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("input 'days'")
    resp = infer_crops(server, [10.0, 30.0], [False, False])
    assert resp.status_code == 422
    assert "row 0 has no valid date" in resp.json()["error"]
    assert infer_crops(server, [10.0, 30.0], [True, False]).status_code == 200
    # 100 000 dates as binary data: refused from the header, as /predict does.
    t = 100_000
    inputs = [
        ("series", [1, t, 10], "FP32", t * 40),
        ("days", [1, t], "FP32", t * 4),
        ("valid", [1, t], "BOOL", t),
    ]
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": b}}
                for n, s, d, b in inputs
            ]
        }
    )
    resp = httpx.post(
        f"{server.url}/v2/models/crops/infer",
        content=header + bytes(t * 45),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    assert resp.status_code == 422
    assert "100000 dates given; at most 366" in resp.json()["error"]


PARTIAL_JSON = b'{"model": "crops", "days": [1, 2,'
PARTIAL_FORM = (
    b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nfootprints\r\n'
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.tif"\r\n'
    b"Content-Type: image/tiff\r\n\r\nII*\x00" + bytes(1000)
)


def hang_up_mid_body(server: LiveServer, path: str, content_type: str, partial: bytes) -> None:
    """Send a request head and part of its body, then close the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode() + partial)
        time.sleep(0.3)


def client_closed_count(server: LiveServer, route: str) -> float:
    """``attnserve_requests_total`` with status 499 on ``route``."""
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        counter = line.startswith("attnserve_requests_total{") and 'status="499"' in line
        if counter and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    ("path", "route", "ctype", "partial"),
    [
        ("/predict", "/predict", "application/json", PARTIAL_JSON),
        ("/predict", "/predict", "multipart/form-data; boundary=x", PARTIAL_FORM),
        ("/v2/models/crops/infer", "/v2/models/{name}/infer", "application/json", PARTIAL_JSON),
    ],
    ids=["predict_json", "predict_multipart", "v2"],
)
def test_client_hanging_up_mid_body_is_a_quiet_499(
    server: LiveServer, path: str, route: str, ctype: str, partial: bytes
) -> None:
    before = client_closed_count(server, route)
    hang_up_mid_body(server, path, ctype, partial)
    deadline = time.monotonic() + 10
    while client_closed_count(server, route) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client_closed_count(server, route) == before + 1
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert 'status="500"' not in httpx.get(f"{server.url}/metrics").text
