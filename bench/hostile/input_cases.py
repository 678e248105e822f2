"""Cases 5, 6 and 7 of the hostile suite: inputs that gave 500s, alpha bands, absurd numbers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx

from bench.hostile import files
from bench.hostile.harness import Case, Ctx, Outcome, statuses_ok

CLIENT_ERRORS = {400, 413, 422}


def _footprints_of(ctx: Ctx, data: bytes) -> Outcome:
    started = time.monotonic()
    made = ctx.upload(data)
    got = [made.status_code]
    notes = []
    if made.status_code == 200:
        job_id = made.json()["job_id"]
        # A threshold that makes (nearly) every pixel a building: there are polygons to
        # transform, whatever the model thinks of noise.
        for params in ({}, {"threshold": 0.001, "min_area_px": 0, "simplify_px": 0}):
            resp = httpx.get(
                f"{ctx.url}/jobs/{job_id}/footprints", params=params, timeout=ctx.left()
            )
            got.append(resp.status_code)
            if resp.status_code == 200:
                notes.append(f"{len(resp.json()['features'])} polygons at {params or 'defaults'}")
            else:
                notes.append(resp.text[:160])
    else:
        notes.append(made.text[:160])
    return Outcome(
        [str(s) for s in got],
        statuses_ok(got[:1], {200, 422}) and statuses_ok(got[1:], {200, 422}),
        time.monotonic() - started,
        notes,
    )


def _dates_brackets(ctx: Ctx, data: bytes) -> Outcome:
    started = time.monotonic()
    resp = ctx.upload(data, model="crops", dates="[" * 100_000)
    return Outcome(
        [str(resp.status_code)],
        resp.status_code == 422,
        time.monotonic() - started,
        [resp.text[:160]],
    )


def _hang_up(ctx: Ctx, target: tuple[str, bytes, str]) -> Outcome:
    """Clients that send half a body and close: no 500, no traceback, server still fine."""
    path, body, ctype = target
    started = time.monotonic()
    for _ in range(10):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", ctx.server.port), timeout=10) as s:
            s.sendall(head + body[: len(body) // 2])
            time.sleep(0.2)
    took = time.monotonic() - started
    time.sleep(1.0)  # the server notices the hang-ups
    after = ctx.request("GET", "/healthz")
    return Outcome(
        ["10 hang-ups", f"then /healthz {after}"],
        after == 200,
        took,
        ["ok means: /healthz 200 after; no 500 and no traceback are checked separately"],
    )


def _post(ctx: Ctx, payload: tuple[str, bytes, dict[str, str]], allowed: set[int]) -> Outcome:
    path, body, headers = payload
    started = time.monotonic()
    try:
        resp = httpx.post(ctx.url + path, content=body, headers=headers, timeout=ctx.left())
    except httpx.HTTPError as exc:
        return Outcome([f"-1 ({type(exc).__name__})"], False, time.monotonic() - started)
    return Outcome(
        [str(resp.status_code)],
        resp.status_code in allowed,
        time.monotonic() - started,
        [resp.text[:200]],
    )


def _rgba(ctx: Ctx, data: bytes) -> Outcome:
    started = time.monotonic()
    resp = ctx.upload(data)
    notes: list[str] = []
    if resp.status_code == 200:
        prediction: Any = resp.json().get("prediction", {})
        notes.append(f"prediction: {str(prediction)[:200]}")
    else:
        notes.append(resp.text[:200])
    return Outcome(
        [str(resp.status_code)], resp.status_code == 200, time.monotonic() - started, notes
    )


def _v2(dates: int, valid: bool) -> tuple[str, bytes, dict[str, str]]:
    body, headers = files.v2_crops(dates, valid)
    return "/v2/models/crops/infer", body, headers


def _json(body: bytes) -> tuple[str, bytes, dict[str, str]]:
    return "/predict", body, {"content-type": "application/json"}


def _absurd(
    name: str,
    what: str,
    expected: str,
    build: Callable[[], tuple[str, bytes, dict[str, str]]],
    allowed: set[int],
) -> Case:
    """A case of absurd numbers (7): one request, answered within ``allowed``."""
    return Case(
        name,
        "7 absurd numbers",
        what,
        expected,
        build,
        partial(_post, allowed=allowed),
        fresh=False,
        limit_s=60,
    )


def input_cases() -> list[Case]:
    """Cases 5 to 7, on one shared server (each is cheap)."""
    georefs = ["local_cs", "tmerc_k_1e-9", "pixel_1e-300", "pixel_1e300", "nan_scale"]
    cases = [
        Case(
            f"footprints_{kind}",
            "5 no 500",
            f"/jobs/{{id}}/footprints of an upload with georeference {kind}",
            "predict 200 or 422; footprints 200 or 422",
            partial(files.odd_georef, kind),
            _footprints_of,
            fresh=False,
            limit_s=60,
        )
        for kind in georefs
    ]
    cases += [
        Case(
            "dates_100000_brackets",
            "5 no 500",
            "crops multipart upload with a dates field of 100,000 '['",
            "422",
            files.crops_tiff,
            _dates_brackets,
            fresh=False,
            limit_s=60,
        ),
        Case(
            "hang_up_predict_json",
            "5 no 500",
            "10 clients hang up halfway through a JSON /predict body",
            "no answer (client gone); no 500 logged or counted",
            lambda: ("/predict", files.parcels_json([1.0, 30.0, 60.0]), "application/json"),
            _hang_up,
            fresh=False,
            limit_s=60,
        ),
        Case(
            "hang_up_v2",
            "5 no 500",
            "10 clients hang up halfway through a /v2 crops infer body",
            "no answer (client gone); no 500 logged or counted",
            lambda: ("/v2/models/crops/infer", _v2(3, True)[1], "application/octet-stream"),
            _hang_up,
            fresh=False,
            limit_s=60,
        ),
        Case(
            "rgba_alpha",
            "6 alpha",
            "RGB GeoTIFF with an alpha 4th band (alpha 0 on the left quarter)",
            "200 (alpha read as the mask)",
            files.rgba,
            _rgba,
            fresh=False,
            limit_s=60,
        ),
        _absurd(
            "days_1e39",
            "crops JSON with days [1, 1e39, 60]",
            "422",
            lambda: _json(files.parcels_json([1.0, 1e39, 60.0])),
            {422},
        ),
        _absurd(
            "v2_valid_all_false",
            "/v2 crops infer whose valid mask is all false",
            "422",
            lambda: _v2(5, False),
            {422},
        ),
        _absurd(
            "v2_100000_dates",
            "/v2 crops infer of one series of 100,000 dates (binary, 4.4 MB)",
            "4xx, as /predict (422)",
            lambda: _v2(100_000, True),
            CLIENT_ERRORS,
        ),
    ]
    return cases
