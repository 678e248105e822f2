"""The viewer's pages, static assets and PNG previews.

Pages are static shells: the data comes from the JSON API through ``fetch``,
with the API key (when one is needed) kept in the tab's session storage. Every
viewer answer carries a strict Content-Security-Policy: scripts, styles and
connections from this origin only, no inline code, no framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Query
from starlette.responses import Response

from service.api.deps import Job, State
from service.errors import NotFound
from service.pipeline import views
from service.viewer import render

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
JS, CSS, PNG = "text/javascript; charset=utf-8", "text/css; charset=utf-8", "image/png"
LEAFLET = "vendor/leaflet"
# Served by name only: nothing else under static/ is reachable, and each file has
# its exact type (the server sends X-Content-Type-Options: nosniff).
ASSETS = {
    "viewer.js": JS,
    "api.js": JS,
    "chart.js": JS,
    "legend.js": JS,
    "map.js": JS,
    "viewer.css": CSS,
    f"{LEAFLET}/leaflet.js": JS,
    f"{LEAFLET}/leaflet.css": CSS,
    **{
        f"{LEAFLET}/images/{name}.png": PNG
        for name in ("layers", "layers-2x", "marker-icon", "marker-icon-2x", "marker-shadow")
    },
}
# The job page's map library (Leaflet, vendored: the viewer works offline).
MAP_HEAD = (
    f'<link rel="stylesheet" href="/viewer/static/{LEAFLET}/leaflet.css">\n'
    f'  <script src="/viewer/static/{LEAFLET}/leaflet.js"></script>\n'
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    example = {"error": {"code": code, "status": status, "message": message}}
    return {"description": message, "content": {"application/json": {"example": example}}}


_PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG preview"}
}
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _error(404, "not_found", "no such job (it may have expired)"),
    409: _error(409, "conflict", "job is running; results exist once it is done"),
}

router = APIRouter(prefix="/viewer", tags=["viewer"])
Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Response]])


def _png_route(
    path: str, summary: str, errors: dict[int | str, dict[str, Any]]
) -> Callable[[Handler], Handler]:
    """A GET route answering a PNG preview, documented with its errors."""
    return router.get(path, summary=summary, response_class=Response, responses={**_PNG, **errors})


def _page(body: str, title: str, page: str, head: str = "") -> Response:
    """One page: the shared shell (head, stylesheet, script) around the page's body."""
    shell = (STATIC / "page.html").read_text()
    html = shell.replace("{title}", title).replace("{page}", page).replace("{head}", head)
    html = html.replace("{body}", (STATIC / body).read_text())
    return Response(html, media_type="text/html", headers=HEADERS)


@router.get("", summary="Viewer: upload form", response_class=Response)
async def upload_page() -> Response:
    """A form to pick a model and a GeoTIFF; the job view follows."""
    return _page("index.html", "attnserve viewer", "upload")


@router.get("/static/{name:path}", include_in_schema=False)
async def asset(name: str) -> Response:
    """The viewer's scripts, stylesheets and the map library's files."""
    if name not in ASSETS:
        raise NotFound(f"no viewer asset {name!r}")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=HEADERS)


@router.get(
    "/{job_id}",
    summary="Viewer: one job",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the job page"}},
)
async def job_page(job_id: str) -> Response:
    """The job on a slippy map: its input under its layers, footprint outlines, values on click.

    The page itself holds no data (the job is fetched by its script with the
    caller's key), so an unknown id still gets the page, which then says so.
    """
    return _page("job.html", "attnserve job", "job", MAP_HEAD)


@_png_route(
    "/{job_id}/layers/{name}.png",
    "Viewer: a raster layer as a grey PNG",
    {
        **_JOB_ERRORS,
        422: _error(422, "invalid_input", "band: Input should be greater than or equal to 0"),
    },
)
async def layer_png(
    job: Job,
    name: str,
    state: State,
    band: int | None = Query(
        None, ge=0, le=100_000, description="class of K-band layers, date of temporal ones"
    ),
) -> Response:
    """Values scaled to 0-255 (probabilities 0-1, attention min-max; see the headers).

    At most 1024 pixels on a side; transparent where there is no data.
    ``X-Value-Range`` gives the values that 0 and 255 stand for.
    """
    views.require_done(job)
    layer = job.layer(name)

    def draw() -> tuple[bytes, float, float]:
        values = render.layer_values(job, state.store, name, band)
        lo, hi = render.scale_of(layer.public(), values)
        return render.grey_png(values, lo, hi), lo, hi

    data, lo, hi = await asyncio.to_thread(draw)
    headers = {"Cache-Control": "no-store", "X-Value-Range": f"{lo:.6g},{hi:.6g}"}
    return Response(data, media_type="image/png", headers=headers)


@_png_route(
    "/{job_id}/input.png",
    "Viewer: the job's input image",
    {404: _error(404, "not_found", "this job kept no input image to preview")},
)
async def input_preview(job: Job, state: State) -> Response:
    """An RGB preview of the uploaded image (for jobs that keep their input)."""
    inputs = (job.params or {}).get("inputs") or []
    missing = NotFound("this job kept no input image to preview")
    if not inputs:
        raise missing
    try:
        data = await asyncio.to_thread(render.input_png, state.store, job, inputs[0])
    except NotFound:
        raise missing from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
