"""Hostile and broken inputs against a live server: each gets its 4xx and a clear message.

One server (API keys on, a 1 MB upload limit, a 1 s body read timeout) takes
every case. Each case states the status and a phrase of the message a user
would see; none may give a 500, and no answer may carry a byte of
``/etc/passwd`` or a server path.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from rasterio.transform import from_origin

from tests.helpers.bodies import chunked_upload
from tests.helpers.geotiff import geotiff as build_geotiff
from tests.helpers.geotiff import noise
from tests.helpers.server import LiveServer

KEY_A = "hardening-key-a-0123456789"
KEY_B = "hardening-key-b-0123456789"
LIMIT_MB = 1
PASSWD = Path("/etc/passwd").read_text().splitlines()[0]
TEN_M = from_origin(500000, 4000000, 10, 10)


def geotiff(bands: int = 3, size: int = 32, dtype: str = "uint8", **profile: object) -> bytes:
    """A georeferenced GeoTIFF (10 m pixels) of seeded random values."""
    return build_geotiff(noise(bands, size, dtype), transform=TEN_M, **profile)


def huge_sparse_geotiff() -> bytes:
    """A few-KB GeoTIFF declaring 100000 x 100000 x 3 pixels, no tile written."""
    return build_geotiff(
        shape=(3, 100_000, 100_000),
        transform=TEN_M,
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        sparse_ok=True,
    )


def vrt(source: str) -> bytes:
    """VRT XML reading band 1 of ``source`` (a path or ``/vsicurl/`` URL)."""
    return (
        '<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:4326</SRS>'
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        '<VRTRasterBand dataType="Byte" band="2" subClass="VRTRawRasterBand">'
        f"<SourceFilename>{source}</SourceFilename></VRTRasterBand>"
        "</VRTDataset>"
    ).encode()


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@dataclass
class Ctx:
    """What the cases send with."""

    server: LiveServer
    client: httpx.Client
    anonymous: httpx.Client
    other: httpx.Client
    shared: Path
    job_id: str
    listener: Listener

    def upload(
        self, data: bytes, model: str = "footprints", name: str = "scene.tif", **fields: str
    ) -> httpx.Response:
        files = {"image": (name, data, "image/tiff")}
        return self.client.post("/predict", data={"model": model, **fields}, files=files)

    def raw(self, head: bytes) -> tuple[int, str]:
        """Send request bytes as they are (no client normalises the path)."""
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(head)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        return int(status_line.split()[1]), body.decode(errors="replace")


def trickle() -> Iterator[bytes]:
    """A JSON body that stalls for longer than the server's read timeout."""
    yield b'{"model": '
    time.sleep(2.5)
    yield b'"crops"}'


def parcels(values: str = "1200.0", dates: int = 3, model: str = "crops") -> bytes:
    """A crops request with ``values`` as every reflectance (raw JSON text)."""
    row = "[" + ", ".join([values] * 10) + "]"
    series = "[" + ", ".join([row] * dates) + "]"
    days = list(range(10, 10 + 30 * dates, 30))
    return (
        f'{{"model": "{model}", "days": {days}, "parcels": [{{"id": "f", "series": {series}}}]}}'
    ).encode()


def post_json(ctx: Ctx, body: bytes) -> httpx.Response:
    return ctx.client.post("/predict", content=body, headers={"content-type": "application/json"})


Send = Callable[[Ctx], "httpx.Response | tuple[int, str]"]
MB2 = 2 * LIMIT_MB * 2**20

CASES: list[tuple[str, Send, int, str]] = [
    # Bodies over the limit, announced or streamed.
    (
        "upload_2x_limit_with_content_length",
        lambda c: c.upload(b"II*\x00" + b"\0" * MB2),
        413,
        "over the 1 MB limit",
    ),
    (
        "upload_2x_limit_chunked",
        lambda c: c.client.post(
            "/predict",
            content=chunked_upload("footprints", MB2),
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        413,
        "over the 1 MB limit",
    ),
    (
        "json_2x_limit_chunked",
        lambda c: c.client.post(
            "/predict",
            content=iter([b'{"model": "crops", "days": [' + b"1, " * (MB2 // 3) + b"1]}"]),
            headers={"content-type": "application/json"},
        ),
        413,
        "over the 1 MB limit",
    ),
    (
        "body_trickling_slower_than_the_read_timeout",
        lambda c: c.client.post(
            "/predict", content=trickle(), headers={"content-type": "application/json"}
        ),
        408,
        "stalled",
    ),
    # Files that are not what they claim.
    ("zero_byte_file", lambda c: c.upload(b""), 422, "empty"),
    (
        "png_renamed_tif",
        lambda c: c.upload(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64)),
        422,
        "no TIFF signature",
    ),
    ("truncated_geotiff", lambda c: c.upload(geotiff(size=256)[:3000]), 422, "GeoTIFF"),
    (
        "corrupt_tif_from_shared_data",
        lambda c: c.upload((c.shared / "corrupt.tif").read_bytes()),
        422,
        "damaged or truncated",
    ),
    ("vrt_xml_named_tif_reading_etc_passwd", lambda c: c.upload(vrt("/etc/passwd")), 422, "TIFF"),
    (
        "vrt_behind_a_tiff_signature",
        lambda c: c.upload(b"II*\x00" + vrt("/etc/passwd")),
        422,
        "could not be opened",
    ),
    (
        "vrt_reading_a_vsicurl_url",
        lambda c: c.upload(vrt(f"/vsicurl/http://127.0.0.1:{c.listener.port}/x.tif")),
        422,
        "TIFF",
    ),
    (
        "mrf_header_named_tif",
        lambda c: c.upload(b"<MRF_META><Raster><DataFile>/etc/passwd</DataFile></Raster>"),
        422,
        "TIFF",
    ),
    # Rasters that open but must not be decoded.
    (
        "geotiff_declaring_100000x100000x3",
        lambda c: c.upload(huge_sparse_geotiff()),
        413,
        "100000x100000 pixels",
    ),
    ("geotiff_with_3000_bands", lambda c: c.upload(geotiff(bands=3000, size=2)), 422, "3000 bands"),
    (
        "complex64_sar",
        lambda c: c.upload((c.shared / "sar_hh_complex64.tif").read_bytes()),
        422,
        "complex64",
    ),
    ("wrong_band_count", lambda c: c.upload(geotiff(bands=5)), 422, "band"),
    (
        "float_nan_tif_for_a_uint8_model",
        lambda c: c.upload((c.shared / "float_nan.tif").read_bytes()),
        422,
        "takes 3 bands",
    ),
    (
        "reflectances_scaled_0_1",
        lambda c: post_json(c, parcels("0.05")),
        422,
        "x 10000",
    ),
    # JSON that is not JSON, or not the right JSON.
    ("nan_in_json_array", lambda c: post_json(c, parcels("NaN")), 422, "not valid JSON"),
    ("infinity_in_json_array", lambda c: post_json(c, parcels("Infinity")), 422, "not valid JSON"),
    ("huge_number_in_json_array", lambda c: post_json(c, parcels("1e999")), 422, "infinity"),
    ("string_in_json_array", lambda c: post_json(c, parcels('"abc"')), 422, "series"),
    (
        "json_10000_deep",
        lambda c: post_json(c, b"[" * 10_000 + b"]" * 10_000),
        422,
        "depth limit",
    ),
    (
        "json_900_deep_image",
        lambda c: post_json(
            c, b'{"model": "footprints", "image": ' + b"[" * 900 + b"]" * 900 + b"}"
        ),
        422,
        "image",
    ),
    (
        "json_unknown_field",
        lambda c: post_json(c, parcels()[:-1] + b', "extra": 1}'),
        422,
        "extra",
    ),
    (
        "json_huge_dates_list",
        lambda c: post_json(
            c,
            json.dumps(
                {"model": "crops", "dates": ["2024-01-01"] * 20_000, "parcels": []}
            ).encode(),
        ),
        422,
        "dates",
    ),
    ("json_top_level_array", lambda c: post_json(c, b"[1, 2, 3]"), 422, "body"),
    ("unknown_model", lambda c: post_json(c, parcels(model="nope")), 404, "nope"),
    ("wrong_task_for_model", lambda c: post_json(c, parcels(model="footprints")), 422, "image"),
    # Content types and forms.
    (
        "wrong_content_type",
        lambda c: c.client.post("/predict", content=b"a=b", headers={"content-type": "text/xml"}),
        415,
        "text/xml is not accepted",
    ),
    ("no_content_type", lambda c: c.client.post("/predict", content=b"abc"), 415, "none"),
    (
        "multipart_without_boundary",
        lambda c: c.client.post(
            "/predict", content=b"abc", headers={"content-type": "multipart/form-data"}
        ),
        422,
        "multipart",
    ),
    (
        "form_missing_model",
        lambda c: c.client.post("/predict", files={"image": ("a.tif", geotiff(), "image/tiff")}),
        422,
        "model field",
    ),
    (
        "form_missing_image",
        lambda c: c.client.post("/predict", files={"model": (None, "footprints")}),
        422,
        "image",
    ),
    ("form_unknown_field", lambda c: c.upload(geotiff(), colour="red"), 422, "unknown form fields"),
    (
        "form_duplicate_model_field",
        lambda c: c.client.post(
            "/predict",
            data={"model": ["footprints", "crops"]},
            files={"image": ("a.tif", geotiff(), "image/tiff")},
        ),
        422,
        "form fields given more than once: model",
    ),
    (
        "form_too_many_files",
        lambda c: c.client.post(
            "/predict",
            data={"model": "crops"},
            files=[("image", (f"{i}.tif", b"II*\x00", "image/tiff")) for i in range(401)],
        ),
        422,
        "files",
    ),
    (
        "form_too_many_fields",
        lambda c: c.client.post(
            "/predict", data={f"f{i}": "x" for i in range(40)}, files={"image": ("a", b"x")}
        ),
        422,
        "fields",
    ),
    ("format_unknown", lambda c: c.upload(geotiff(), format="xml"), 422, "format must be"),
    (
        "bad_dates_field",
        lambda c: c.upload(geotiff(bands=10), model="crops", dates="yesterday"),
        422,
        "ISO dates",
    ),
    # Job ids and who may read them.
    ("job_id_dot_dot_slash", lambda c: c.raw(_get("/jobs/../../etc/passwd")), 404, "not"),
    (
        "job_id_percent_encoded_dots",
        lambda c: c.client.get("/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        404,
        "not found",
    ),
    ("job_id_with_nul", lambda c: c.client.get("/jobs/AAAAAAAAAAAA%00AAAAAAAAAAA"), 404, "job"),
    (
        "job_id_raw_nul_byte",
        lambda c: c.raw(_get("/jobs/AAAA\x00AAAA")),
        400,
        "invalid http request",
    ),
    ("another_keys_job", lambda c: c.other.get(f"/jobs/{c.job_id}"), 404, "no such job"),
    (
        "another_keys_attention",
        lambda c: c.other.get(f"/attention/{c.job_id}?format=geotiff"),
        404,
        "no such job",
    ),
    ("unknown_layer", lambda c: c.client.get(f"/attention/{c.job_id}/secret"), 404, "no layer"),
    (
        "negative_head_index",
        lambda c: c.client.get(f"/attention/{c.job_id}/gate_1?head=-1"),
        422,
        "head",
    ),
    # Authentication.
    ("unauthenticated_predict", lambda c: c.anonymous.post("/predict"), 401, "API key"),
    ("unauthenticated_job", lambda c: c.anonymous.get(f"/jobs/{c.job_id}"), 401, "API key"),
    (
        "wrong_key",
        lambda c: c.anonymous.get("/models", headers={"Authorization": "Bearer " + KEY_A[:-1]}),
        401,
        "API key",
    ),
    (
        "basic_auth_instead_of_bearer",
        lambda c: c.anonymous.get("/models", auth=("a", "b")),
        401,
        "Bearer",
    ),
    # Headers.
    (
        "200_kb_header",
        lambda c: c.client.get("/models", headers={"X-Pad": "x" * 200_000}),
        431,
        "over the 64 KiB limit",
    ),
]


def _get(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def ctx(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, shared_data: Path
) -> Iterator[Ctx]:
    tmp = tmp_path_factory.mktemp("hardening")
    server = LiveServer(
        {
            "ATTNSERVE_MODEL_DIR": str(model_dir),
            "ATTNSERVE_JOB_DIR": str(tmp / "jobs"),
            "ATTNSERVE_API_KEYS": json.dumps([KEY_A, KEY_B]),
            "ATTNSERVE_MAX_UPLOAD_MB": str(LIMIT_MB),
            "ATTNSERVE_MAX_JSON_MB": str(LIMIT_MB),
            "ATTNSERVE_BODY_READ_TIMEOUT_S": "1",
        },
        tmp / "server.log",
    )
    listener = Listener()
    try:
        server.wait_ready()
        with (
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60
            ) as client,
            httpx.Client(base_url=server.url, timeout=60) as anonymous,
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60
            ) as other,
        ):
            made = client.post(
                "/predict",
                data={"model": "footprints"},
                files={"image": ("a.tif", geotiff(), "image/tiff")},
            )
            assert made.status_code == 200, made.text
            yield Ctx(
                server, client, anonymous, other, shared_data, made.json()["job_id"], listener
            )
    finally:
        listener.close()
        server.stop()


@pytest.mark.parametrize(
    ("send", "status", "phrase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_with_its_status_and_a_clear_message(
    ctx: Ctx, send: Send, status: int, phrase: str
) -> None:
    answer = send(ctx)
    if isinstance(answer, tuple):
        got, text = answer
    else:
        got, text = answer.status_code, answer.text
    assert got == status, text[:500]
    assert phrase.lower() in text.lower()
    assert PASSWD not in text
    assert "Traceback" not in text
    assert str(ctx.shared) not in text
    assert "/vsimem/" not in text
    if got in (413, 422, 415, 404, 401, 408) and text:
        error = json.loads(text)["error"]
        assert error["status"] == got
        assert error["message"]


def test_no_connection_was_made_for_a_vsicurl_source(ctx: Ctx) -> None:
    # The TIFF signature check refuses VRT bytes outright; this shows GDAL never
    # got as far as fetching, even to try.
    for body in (
        vrt(f"/vsicurl/http://127.0.0.1:{ctx.listener.port}/x.tif"),
        b"II*\x00" + vrt(f"/vsicurl/http://127.0.0.1:{ctx.listener.port}/x.tif"),
    ):
        assert ctx.upload(body).status_code == 422
    time.sleep(0.5)
    assert ctx.listener.connections == 0


def test_the_server_still_serves_after_every_bad_input(ctx: Ctx) -> None:
    resp = ctx.upload(geotiff())
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-store"
    log = ctx.server.log_path.read_text()
    assert "Traceback" not in log
    assert "unhandled error" not in log
