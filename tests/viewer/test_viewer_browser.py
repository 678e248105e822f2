"""The viewer in headless Chromium: no console errors, every layer drawn, a screenshot kept.

Needs ``pip install playwright`` and Debian's ``chromium`` (``/usr/bin/chromium``,
or ``ATTNSERVE_CHROMIUM``); without them the tests skip and say so. Screenshots go
to ``ATTNSERVE_VIEWER_ARTIFACTS`` when set, else to the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import SHIPPED_MODELS
from tests.helpers.bodies import upload
from tests.helpers.geotiff import SHARED
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
    """A browser page that records console errors and failed page scripts."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 1200})
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


def _finished_job(server: LiveServer) -> dict[str, Any]:
    # An async job keeps its input, so the page can show it under the layers.
    data = (SHARED / "cogeo.tif").read_bytes()
    resp = httpx.post(f"{server.url}/predict", **upload(data, **{"async": "true"}), timeout=120)
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


CANVAS_DIGEST = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, painted = 0;
  for (let i = 0; i < d.length; i += 4) {
    sum = (sum + d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7) % 1000000007;
    if (d[i + 3]) painted++;
  }
  return [sum, painted];
}"""


def test_footprint_job_page_draws_every_layer(
    server: LiveServer, browser: Any, artifacts: Path
) -> None:
    job = _finished_job(server)
    layers = [la["name"] for la in job["prediction"]["layers"] + job["attention"]]
    layers = [
        n
        for n, la in zip(layers, job["prediction"]["layers"] + job["attention"], strict=True)
        if len(la["shape"]) == 2
    ]
    page = Page(browser)
    page.open(f"{server.url}/viewer/{job['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-layer") == layers[0]
    digests = {}
    for name in layers:
        p.check(f"input[data-layer='{name}']")
        p.wait_for_selector(f"body[data-layer='{name}']")
        digests[name], painted = p.evaluate(CANVAS_DIGEST, "overlay")
        assert painted > 0, name
    assert len(set(digests.values())) == len(layers), digests
    _, base_painted = p.evaluate(CANVAS_DIGEST, "base")
    assert base_painted > 0
    assert p.get_attribute("body", "data-input") == "1"
    assert int(p.get_attribute("body", "data-footprints") or -1) >= 0
    p.fill("#opacity", "0.5")
    p.check(f"input[data-layer='{layers[1]}']")
    p.wait_for_selector(f"body[data-layer='{layers[1]}']")
    shot = artifacts / "viewer-footprints.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # A small copy, fit to commit as an example (tests/viewer/example-footprints.jpg).
    p.screenshot(path=str(artifacts / "viewer-footprints.jpg"), type="jpeg", quality=60)
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
    assert p.get_attribute("body", "data-layer") == "probability"
    assert page.errors == []


def test_crop_parcels_chart_attention_per_date(
    server: LiveServer, browser: Any, artifacts: Path
) -> None:
    dates = ["2024-03-02", "2024-04-08", "2024-05-20", "2024-07-01", "2024-08-15"]
    parcels = [
        {"id": f"field-{i}", "series": [[300.0 + 200 * i + 50 * t] * 10 for t in range(5)]}
        for i in range(3)
    ]
    resp = httpx.post(
        f"{server.url}/predict",
        json={"model": "crops", "dates": dates, "parcels": parcels},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    page = Page(browser)
    page.open(f"{server.url}/viewer/{resp.json()['job_id']}")
    p = page.page
    assert p.get_attribute("body", "data-chart") == "field-0"
    first = p.evaluate(CANVAS_DIGEST, "chart")
    p.click("tr[data-id='field-2']")
    p.wait_for_selector("body[data-chart='field-2']")
    second = p.evaluate(CANVAS_DIGEST, "chart")
    assert second[1] > 0
    assert first != second
    p.screenshot(path=str(artifacts / "viewer-crops.png"), full_page=True)
    assert page.errors == []
