"""The viewer's HTTP side: security headers, asset types, PNG previews, OpenAPI entries."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from service.config import SHIPPED_MODELS
from service.raster.tiles import CLASS_COLOURS, colormap_stops
from service.viewer.routes import STATIC
from tests.helpers.bodies import upload
from tests.helpers.geotiff import SHARED
from tests.helpers.server import LiveServer, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server."""
    model_dir = os.environ.get("ATTNSERVE_TEST_MODEL_DIR", str(SHIPPED_MODELS))
    with serving(model_dir, tmp_path_factory.mktemp("viewer-routes")) as live:
        yield live


def _png(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        # Previews carry no georeference by design.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open(driver="PNG") as src:
            return src.read()


def test_pages_carry_a_strict_csp_and_assets_their_types(server: LiveServer) -> None:
    for path in ("/viewer", "/viewer/some-job"):
        resp = httpx.get(server.url + path)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/html")
        csp = resp.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
    js = httpx.get(server.url + "/viewer/static/viewer.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    css = httpx.get(server.url + "/viewer/static/viewer.css")
    assert css.headers["content-type"].startswith("text/css")
    for name in ("routes.py", "index.html", "..%2Froutes.py", "vendor/leaflet/LICENSE"):
        assert httpx.get(f"{server.url}/viewer/static/{name}").status_code == 404
    assert httpx.get(f"{server.url}/viewer/static/vendor/../routes.py").status_code == 404


def test_the_map_library_is_served_from_the_package(server: LiveServer) -> None:
    vendored = STATIC / "vendor" / "leaflet"
    assert "BSD 2-Clause" in (vendored / "LICENSE").read_text()
    for name, media in (
        ("leaflet.js", "text/javascript"),
        ("leaflet.css", "text/css"),
        ("images/layers.png", "image/png"),
    ):
        resp = httpx.get(f"{server.url}/viewer/static/vendor/leaflet/{name}")
        assert resp.status_code == 200, name
        assert resp.headers["content-type"].startswith(media)
        assert resp.content == (vendored / name).read_bytes()
    assert "Leaflet 1.9.4" in (vendored / "leaflet.js").read_text()[:200]
    page = httpx.get(f"{server.url}/viewer/some-job").text
    assert '<script src="/viewer/static/vendor/leaflet/leaflet.js"></script>' in page
    assert "https://" not in page.split("<body")[0]  # nothing from elsewhere: works offline
    assert "leaflet" not in httpx.get(f"{server.url}/viewer").text


def test_the_scripts_legend_colours_are_the_tiles(server: LiveServer) -> None:
    # Pages without map tiles (no georeference) colour layers in the browser.
    script = httpx.get(f"{server.url}/viewer/static/legend.js").text
    listed = script.split("VIRIDIS_STOPS = [", 1)[1].split("]", 1)[0]
    assert re.findall(r"#[0-9a-f]{6}", listed) == colormap_stops()
    palette = script.split("CLASS_COLOURS = [", 1)[1].split("]", 1)[0]
    assert re.findall(r"#([0-9a-f]{6})", palette) == list(CLASS_COLOURS)


def test_layer_previews_are_scaled_grey_pngs(server: LiveServer) -> None:
    data = (SHARED / "cogeo.tif").read_bytes()
    resp = httpx.post(f"{server.url}/predict", **upload(data), timeout=300)
    assert resp.status_code == 200, resp.text
    job = resp.json()
    base = f"{server.url}/viewer/{job['job_id']}"
    prob = httpx.get(f"{base}/layers/probability.png")
    assert prob.headers["content-type"] == "image/png"
    assert prob.headers["x-value-range"] == "0,1"
    grey, alpha = _png(prob.content)
    assert grey.shape == (1024, 1024)
    assert (alpha == 255).all()
    values = httpx.get(f"{server.url}/jobs/{job['job_id']}/prediction", timeout=60).json()
    expected = np.round(np.clip(np.asarray(values["values"], dtype=np.float32), 0, 1) * 255)
    assert np.abs(grey.astype(int) - expected).max() <= 1

    gate = httpx.get(f"{base}/layers/gate_1.png")
    lo, hi = (float(v) for v in gate.headers["x-value-range"].split(","))
    assert lo < hi
    grey, _ = _png(gate.content)
    assert grey.min() == 0
    assert grey.max() == 255

    missing = httpx.get(f"{base}/layers/nope.png")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]["message"]
    assert httpx.get(f"{base}/layers/band_weights.png").status_code == 404
    # Synchronous answers keep no input image.
    assert httpx.get(f"{base}/input.png").status_code == 404


def test_viewer_endpoints_are_documented(server: LiveServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    layer = spec["paths"]["/viewer/{job_id}/layers/{name}.png"]["get"]["responses"]
    assert {"200", "404", "409", "422"} <= set(layer)
    assert "example" in layer["404"]["content"]["application/json"]
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"200", "404", "413", "422", "503"} <= set(infer["responses"])
    assert infer["responses"]["422"]["content"]["application/json"]["example"]["error"]
    assert "application/octet-stream" in infer["requestBody"]["content"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_input_preview_of_a_scene_job(server: LiveServer) -> None:
    data = (SHARED / "cogeo.tif").read_bytes()
    resp = httpx.post(f"{server.url}/predict", **upload(data, **{"async": "true"}), timeout=120)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    early = httpx.get(f"{server.url}/viewer/{job_id}/input.png")
    assert early.status_code == 200
    rgba = _png(early.content)
    assert rgba.shape == (4, 1024, 1024)
    assert rgba[:3].std() > 10
    deadline = time.monotonic() + 300
    while httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_both_pages_share_one_shell_with_their_own_title_and_body(server: LiveServer) -> None:
    pages = {path: httpx.get(f"{server.url}{path}").text for path in ("/viewer", "/viewer/j1")}
    upload_page, job_page = pages["/viewer"], pages["/viewer/j1"]
    for html in (upload_page, job_page):
        assert html.startswith("<!doctype html>")
        assert '<script type="module" src="/viewer/static/viewer.js"></script>' in html
        assert '<link rel="stylesheet" href="/viewer/static/viewer.css">' in html
        assert "{" not in html.split("<body")[0]
        assert html.rstrip().endswith("</html>")
    assert "<title>attnserve viewer</title>" in upload_page
    assert '<body data-page="upload">' in upload_page
    assert '<form id="upload">' in upload_page
    assert "<title>attnserve job</title>" in job_page
    assert '<body data-page="job">' in job_page
    assert '<form id="upload">' not in job_page
