"""The viewer in headless Chromium: a job on a slippy map, popups, charts, no console errors.

Needs ``pip install playwright`` and Debian's ``chromium`` (``/usr/bin/chromium``,
or ``ATTNSERVE_CHROMIUM``); without them the tests skip and say so. Screenshots go
to ``ATTNSERVE_VIEWER_ARTIFACTS`` when set, else to the test's tmp_path:
``ATTNSERVE_VIEWER_ARTIFACTS=tests/viewer/screenshots`` regenerates the committed ones.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from service.config import SHIPPED_MODELS
from tests.helpers.bodies import upload
from tests.helpers.geotiff import SHARED, geotiff, noise
from tests.helpers.scenes import dated_stack
from tests.helpers.server import LiveServer, serving

CHROMIUM = os.environ.get("ATTNSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DUBAI_PHOTO = SHARED.parent / "footprints" / "dubai" / "Tile 1" / "images" / "image_part_009.jpg"
DATES = ["2024-03-02", "2024-04-08", "2024-05-20", "2024-07-01", "2024-08-15"]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the viewer tests need Playwright: pip install playwright"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"the viewer tests need Chromium at {CHROMIUM}: apt-get install chromium",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server for the viewer."""
    model_dir = os.environ.get("ATTNSERVE_TEST_MODEL_DIR", str(SHIPPED_MODELS))
    with serving(model_dir, tmp_path_factory.mktemp("viewer")) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium."""
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots are written."""
    target = Path(os.environ.get("ATTNSERVE_VIEWER_ARTIFACTS", tmp_path))
    target.mkdir(parents=True, exist_ok=True)
    return target


class Page:
    """A browser page that records console errors, failed page scripts and 4xx/5xx answers."""

    def __init__(self, browser: Any, width: int = 1280, height: int = 800) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on(
            "response",
            lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=120_000)

    def settle(self) -> None:
        """Wait until every tile layer on the map has loaded its tiles."""
        self.page.wait_for_function(TILES_LOADED, timeout=60_000)
        self.page.wait_for_timeout(300)  # fade-in of the last tiles

    def zoom(self, z: int) -> None:
        """The map at zoom ``z`` over the middle of the job's raster."""
        self.page.evaluate(
            "(z) => { const m = window.attnserveMap;"
            " m.setView(m.dataBounds.getCenter(), z, {animate: false}); }",
            z,
        )
        self.settle()


def _scene(server: LiveServer, **fields: Any) -> dict[str, Any]:
    """A scene job of ``fields`` (an upload), followed until it is done."""
    resp = httpx.post(f"{server.url}/predict", timeout=120, **fields)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(f"{server.url}/jobs/{job_id}", timeout=30).json()
        if job["state"] == "done":
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.5)
    raise TimeoutError(job_id)


@pytest.fixture(scope="module")
def footprints_scene(server: LiveServer) -> dict[str, Any]:
    """A footprints scene job of a real satellite photo with buildings: it keeps its input.

    Dubai ``Tile 1`` image 9 (797 x 644, about a fifth of it buildings; a tile the
    shipped model never trained on), written as a GeoTIFF at 0.5 m in UTM 40N.
    """
    if not DUBAI_PHOTO.exists():
        pytest.skip("shared footprints data not present")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain JPEG
        with rasterio.open(DUBAI_PHOTO) as src:
            pixels = src.read()
    data = geotiff(
        pixels, crs="EPSG:32640", transform=from_origin(326_000.0, 2_788_000.0, 0.5, 0.5)
    )
    return _scene(server, **upload(data, **{"async": "true"}))


@pytest.fixture(scope="module")
def crop_scene(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A crops scene job of five dated 10-band Sentinel-2-like images, 48 x 48 at 10 m."""
    paths = dated_stack(tmp_path_factory.mktemp("crop-scene"), 48, DATES, seed=2)
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    return _scene(
        server, data={"model": "crops", "dates": ",".join(DATES), "async": "true"}, files=files
    )


TILES_LOADED = """() => {
  const m = window.attnserveMap;
  if (!m) return false;
  let busy = false;
  m.eachLayer((l) => { if (l instanceof L.TileLayer && l.isLoading()) busy = true; });
  return !busy;
}"""

# Pixel statistics of the loaded tiles of one tile layer, as drawn in the browser:
# count of opaque pixels, mean and standard deviation of R, G, B over them, and the
# share of them that are colours of the viridis map (within a few steps).
TILE_STATS = """([name, stops]) => {
  const layers = [];
  window.attnserveMap.eachLayer((l) => { if (l instanceof L.TileLayer) layers.push(l); });
  const layer = name === 'input'
    ? layers.find((l) => l._url.includes('/tiles/input/'))
    : layers.find((l) => l._url.includes(`/tiles/${name}/`));
  const imgs = [...layer.getContainer().querySelectorAll('img.leaflet-tile-loaded')];
  const canvas = document.createElement('canvas');
  canvas.width = 256; canvas.height = 256;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const palette = stops.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
  let n = 0, viridis = 0;
  const sum = [0, 0, 0], sq = [0, 0, 0];
  for (const img of imgs) {
    ctx.clearRect(0, 0, 256, 256);
    ctx.drawImage(img, 0, 0, 256, 256);
    const d = ctx.getImageData(0, 0, 256, 256).data;
    for (let i = 0; i < d.length; i += 16) {
      if (d[i + 3] < 255) continue;
      n++;
      for (let c = 0; c < 3; c++) { sum[c] += d[i + c]; sq[c] += d[i + c] ** 2; }
      // Near the polyline through the map's stops: close to one of its segments' points.
      let best = 1e9;
      for (let k = 0; k + 1 < palette.length; k++) {
        for (let t = 0; t <= 1; t += 0.125) {
          let dist = 0;
          for (let c = 0; c < 3; c++) {
            const v = palette[k][c] + (palette[k + 1][c] - palette[k][c]) * t;
            dist += (d[i + c] - v) ** 2;
          }
          best = Math.min(best, dist);
        }
      }
      if (best < 15 * 15) viridis++;
    }
  }
  const mean = sum.map((s) => s / Math.max(1, n));
  const std = sq.map((s, c) => Math.sqrt(Math.max(0, s / Math.max(1, n) - mean[c] ** 2)));
  return {tiles: imgs.length, n, mean, std, viridis: viridis / Math.max(1, n)};
}"""

# Footprint outlines drawn inside the map's visible area.
VISIBLE_OUTLINES = """() => {
  const box = document.getElementById('map').getBoundingClientRect();
  return [...document.querySelectorAll('path.footprint')].filter((p) => {
    const r = p.getBoundingClientRect();
    return r.width > 0 && r.right > box.left && r.left < box.right
      && r.bottom > box.top && r.top < box.bottom;
  }).length;
}"""

# A point of the map's visible area on a footprint's fill (what a click there hits).
POINT_ON_FOOTPRINT = """() => {
  const box = document.getElementById('map').getBoundingClientRect();
  for (const path of document.querySelectorAll('path.footprint')) {
    const r = path.getBoundingClientRect();
    const steps = [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8];
    for (const fy of steps) {
      for (const fx of steps) {
        const x = r.left + r.width * fx, y = r.top + r.height * fy;
        if (x < box.left + 60 || x > box.right - 10) continue;
        if (y < box.top + 10 || y > box.bottom - 30) continue;
        if (document.elementFromPoint(x, y) === path) return [x, y];
      }
    }
  }
  return null;
}"""


def _viridis_stops() -> list[str]:
    from service.raster.tiles import colormap_stops

    return colormap_stops()


def small_png(source: Path, target: Path) -> Path:
    """A screenshot in 16 levels per colour, deflated hard: a third of its bytes, still legible."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as ds:
            rgb = ds.read([1, 2, 3])
        posterized = (rgb // 16) * 16 + 8
        profile = {"driver": "PNG", "width": rgb.shape[2], "height": rgb.shape[1], "count": 3}
        with rasterio.open(target, "w", dtype="uint8", ZLEVEL=9, **profile) as dst:
            dst.write(posterized.astype(np.uint8))
    return target


def _screenshot_rgb(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return np.asarray(ds.read([1, 2, 3]))


@pytest.mark.parametrize("zoom", [14, 17, 19])
def test_a_footprints_scene_shows_its_photo_under_the_overlay_legend_and_outlines(
    server: LiveServer,
    browser: Any,
    footprints_scene: dict[str, Any],
    artifacts: Path,
    tmp_path: Path,
    zoom: int,
) -> None:
    page = Page(browser)
    page.open(f"{server.url}/viewer/{footprints_scene['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-base") == "input"
    assert p.get_attribute("body", "data-overlays") == "probability"
    page.zoom(zoom)
    stops = _viridis_stops()
    base = p.evaluate(TILE_STATS, ["input", stops])
    overlay = p.evaluate(TILE_STATS, ["probability", stops])
    assert base["n"] > 300, base
    assert overlay["n"] > 300, overlay
    # The photo: varied, and not viridis; the overlay: viridis, unlike the photo.
    assert min(base["std"]) > 15, base
    assert base["viridis"] < 0.5, base
    assert overlay["viridis"] > 0.95, overlay
    assert np.abs(np.subtract(base["mean"], overlay["mean"])).max() > 20, (base, overlay)

    legend = p.locator(".overlay[data-overlay='probability'] .legend canvas")
    assert legend.is_visible()
    assert p.locator(".overlay[data-overlay='probability'] .legend").inner_text().startswith("0")
    assert int(p.get_attribute("body", "data-footprints") or 0) > 0
    assert p.evaluate(VISIBLE_OUTLINES) > 0

    shot = tmp_path / "shot.png"
    p.screenshot(path=str(shot))
    small_png(shot, artifacts / f"footprints-scene-z{zoom}.png")
    # What the screenshot shows of the map is the photo under the overlay, not one colour.
    box = p.locator("#map").bounding_box()
    rgb = _screenshot_rgb(shot)[
        :,
        int(box["y"]) : int(box["y"] + box["height"]),
        int(box["x"]) : int(box["x"] + box["width"]),
    ]
    assert rgb.std(axis=(1, 2)).min() > 10
    assert page.errors == []


def test_clicking_a_footprint_opens_its_popup(
    server: LiveServer, browser: Any, footprints_scene: dict[str, Any]
) -> None:
    page = Page(browser)
    page.open(f"{server.url}/viewer/{footprints_scene['job_id']}")
    p = page.page
    page.zoom(18)
    spot = p.evaluate(POINT_ON_FOOTPRINT)
    assert spot is not None, "no footprint to click in view"
    p.mouse.click(*spot)
    popup = p.locator(".leaflet-popup-content")
    popup.wait_for(timeout=10_000)
    text = popup.inner_text()
    for words in ("footprint", "mean probability", "mean attention", "gate_1", "area", "m²"):
        assert words in text, text
    assert p.get_attribute("body", "data-popup") not in (None, "")
    # The click also reads every layer's values at that place.
    p.wait_for_selector("body[data-point]")
    values = p.locator("#point-values").inner_text()
    assert "probability" in values
    assert "gate_4" in values
    assert page.errors == []


def test_layers_switch_on_and_off_and_fade(
    server: LiveServer, browser: Any, footprints_scene: dict[str, Any]
) -> None:
    page = Page(browser, width=2560, height=1440)
    page.open(f"{server.url}/viewer/{footprints_scene['job_id']}")
    p = page.page
    # Wide screens: the map takes the room the panel leaves, with nothing to scroll sideways.
    assert p.locator("#map").bounding_box()["width"] > 2000
    assert p.evaluate("document.documentElement.scrollWidth") <= 2560
    p.check("input[type='checkbox'][data-layer='gate_2']")
    p.wait_for_selector("body[data-overlays='probability,gate_2']")
    p.uncheck("input[type='checkbox'][data-layer='probability']")
    p.wait_for_selector("body[data-overlays='gate_2']")
    p.fill("input[type='range'][data-layer='gate_2']", "0.25")
    opacity = p.evaluate(
        "() => { let o; window.attnserveMap.eachLayer((l) => { if (l._url?.includes('/gate_2/'))"
        " o = l.getContainer().style.opacity; }); return o; }"
    )
    assert float(opacity) == pytest.approx(0.25)
    p.check("input[data-base='none']")
    p.wait_for_selector("body[data-base='none']")
    assert p.locator(".leaflet-tile-pane img[src*='/tiles/input/']").count() == 0
    assert page.errors == []


def test_clicking_a_crop_scene_charts_attention_per_date(
    server: LiveServer, browser: Any, crop_scene: dict[str, Any], artifacts: Path, tmp_path: Path
) -> None:
    page = Page(browser)
    page.open(f"{server.url}/viewer/{crop_scene['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-base") == "input"
    page.settle()
    # The class map's legend: its classes by name, in the tiles' colours.
    legend = p.locator(".overlay[data-overlay='class'] .legend li")
    assert legend.count() == len(crop_scene["prediction"]["layers"][0]["classes"])
    box = p.locator("#map").bounding_box()
    p.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.wait_for_selector("body[data-chart]")
    mean = p.locator("#point-chart svg polyline[data-name='mean']")
    assert len(mean.get_attribute("points").split()) == len(DATES)
    assert p.locator("#point-chart svg text").filter(has_text=DATES[-1]).count() == 1
    row, col = (int(v) for v in p.get_attribute("body", "data-chart").split(","))
    answer = httpx.get(
        f"{server.url}/jobs/{crop_scene['job_id']}/point", params={"row": row, "col": col}
    ).json()
    attention = next(la for la in answer["layers"] if la["name"] == "attention")
    assert abs(row - 24) <= 2
    assert abs(col - 24) <= 2
    assert sum(attention["values"]) == pytest.approx(1.0, abs=0.02)
    # A date of the attention overlay picked from its list: its tiles are drawn.
    p.check("input[type='checkbox'][data-layer='attention']")
    p.select_option("select[data-layer='attention']", DATES[2])
    p.wait_for_selector(f".leaflet-tile-pane img[src*='/attention:{DATES[2]}/']")
    page.settle()
    p.locator("#point-chart").scroll_into_view_if_needed()
    shot = tmp_path / "shot.png"
    p.screenshot(path=str(shot))
    small_png(shot, artifacts / "crop-scene-chart.png")
    assert page.errors == []


def test_a_synchronous_job_has_its_layers_on_a_plain_background(
    server: LiveServer, browser: Any
) -> None:
    resp = httpx.post(f"{server.url}/predict", **upload(geotiff(noise(3, 256, seed=5))), timeout=60)
    assert resp.status_code == 200, resp.text
    page = Page(browser)
    page.open(f"{server.url}/viewer/{resp.json()['job_id']}")
    p = page.page
    page.settle()
    assert p.get_attribute("body", "data-base") == "none"
    assert "kept no input image" in p.locator("#note").inner_text()
    assert p.locator(".leaflet-tile-pane img.leaflet-tile-loaded").count() > 0
    assert page.errors == []


def test_band_attention_lists_each_bands_weight_from_the_job(
    server: LiveServer, browser: Any
) -> None:
    resp = httpx.post(f"{server.url}/predict", **upload(geotiff(noise(3, 128, seed=7))), timeout=60)
    assert resp.status_code == 200, resp.text
    job = resp.json()
    (layer,) = [a for a in job["attention"] if a["kind"] == "channel"]
    page = Page(browser)
    page.open(f"{server.url}/viewer/{job['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-channels") == layer["name"]
    assert p.locator("#channels").is_visible()
    rows = p.locator(f"table.channel[data-layer='{layer['name']}'] tr")
    assert rows.count() == len(layer["weights"]) == 3
    widths = {}
    for band, weight in layer["weights"].items():
        row = p.locator(f"table.channel tr[data-band='{band}']")
        assert row.locator("td").nth(2).inner_text() == f"{weight:.3f}"
        widths[band] = row.locator(".bar").bounding_box()["width"]
    # Bars are proportional to the weights, the largest filling its cell.
    top = max(layer["weights"], key=layer["weights"].get)
    for band, weight in layer["weights"].items():
        expected = widths[top] * weight / layer["weights"][top]
        assert abs(widths[band] - expected) <= 1.5, (widths, layer["weights"])
    assert page.errors == []


def test_an_image_without_georeference_is_shown_on_its_pixel_grid(
    server: LiveServer, browser: Any
) -> None:
    data = geotiff(noise(3, 128, seed=6), crs=None)
    resp = httpx.post(f"{server.url}/predict", **upload(data), timeout=60)
    assert resp.status_code == 200, resp.text
    page = Page(browser)
    page.open(f"{server.url}/viewer/{resp.json()['job_id']}")
    p = page.page
    assert "no usable georeference" in p.locator("#note").inner_text()
    assert p.locator(".leaflet-overlay-pane img.pixels").count() == 1
    box = p.locator("#map").bounding_box()
    p.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.wait_for_selector("body[data-point]")
    row, col = (int(v) for v in p.get_attribute("body", "data-point").split(","))
    assert abs(row - 64) <= 3
    assert abs(col - 64) <= 3
    assert "probability" in p.locator("#point-values").inner_text()
    assert page.errors == []


def test_upload_form_leads_to_the_job_view(server: LiveServer, browser: Any) -> None:
    page = Page(browser)
    page.open(f"{server.url}/viewer")
    p = page.page
    options = p.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == ["crops", "crops-mato-grosso", "footprints"]
    p.select_option("#model", "footprints")
    p.set_input_files("#image", str(SHARED / "cogeo.tif"))
    p.click("button[type='submit']")
    p.wait_for_url(f"{server.url}/viewer/*", timeout=120_000)
    p.wait_for_selector("body[data-ready='1']", timeout=120_000)
    assert p.get_attribute("body", "data-overlays") == "probability"
    assert page.errors == []


def test_crop_parcels_chart_attention_per_date(server: LiveServer, browser: Any) -> None:
    parcels = [
        {"id": f"field-{i}", "series": [[300.0 + 200 * i + 50 * t] * 10 for t in range(5)]}
        for i in range(3)
    ]
    resp = httpx.post(
        f"{server.url}/predict",
        json={"model": "crops", "dates": DATES, "parcels": parcels},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    page = Page(browser)
    page.open(f"{server.url}/viewer/{resp.json()['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-chart") == "field-0"
    mean = p.locator("#series-chart polyline[data-name='mean']")
    first = mean.get_attribute("points")
    assert len(first.split()) == len(DATES)
    assert p.locator("#series-chart polyline").count() > 1  # the heads too
    p.click("tr[data-id='field-2']")
    p.wait_for_selector("body[data-chart='field-2']")
    assert mean.get_attribute("points") != first
    assert page.errors == []


@pytest.mark.slow  # a second server; the open asset paths are checked in test_auth.py
def test_with_api_keys_the_page_sends_the_tabs_key_for_tiles_and_values(
    browser: Any, tmp_path: Path
) -> None:
    key = "viewer-test-key-of-the-tab"
    model_dir = os.environ.get("ATTNSERVE_TEST_MODEL_DIR", str(SHIPPED_MODELS))
    with serving(model_dir, tmp_path, api_keys=json.dumps([key])) as keyed:
        auth = {"Authorization": f"Bearer {key}"}
        data = geotiff(noise(3, 256, seed=7))
        resp = httpx.post(f"{keyed.url}/predict", headers=auth, **upload(data), timeout=60)
        assert resp.status_code == 200, resp.text
        page = Page(browser)
        page.page.add_init_script(f"sessionStorage.setItem('attnserve.apiKey', '{key}')")
        page.open(f"{keyed.url}/viewer/{resp.json()['job_id']}")
        p = page.page
        page.settle()
        # Tiles come through fetch with the key, shown from blob URLs.
        tiles = p.locator(".leaflet-tile-pane img.leaflet-tile-loaded")
        assert tiles.count() > 0
        assert (tiles.first.get_attribute("src") or "").startswith("blob:")
        box = p.locator("#map").bounding_box()
        p.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        p.wait_for_selector("body[data-point]")
        assert page.errors == []
