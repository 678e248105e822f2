"""The round-one soak (``bench/soak/soak.py``) with the hostile suite's cheap cases mixed in.

The soak script is used as it is: its request mix gains the new cases, each
with the statuses it may get, and anything else counts as unexpected. Only the
cheap cases join (a soak is about many requests, not a few huge ones).
"""

from __future__ import annotations

import importlib.util
import random
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from bench.hostile import files
from tests.helpers.server import REPO


def _load_soak() -> ModuleType:
    # The soak is a script (run by path), not a package module.
    spec = importlib.util.spec_from_file_location("attnserve_soak", REPO / "bench/soak/soak.py")
    if spec is None or spec.loader is None:
        raise ImportError("bench/soak/soak.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while they are made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def hostile_cases(soak: ModuleType) -> list[Any]:
    """The hostile suite's cheap cases as soak cases (the soak's 2 MB upload limit applies)."""
    case = soak.Case
    rgba = files.rgba()
    odd = {k: files.odd_georef(k) for k in ("local_cs", "tmerc_k_1e-9", "nan_scale")}
    crops = files.crops_tiff()
    days = files.parcels_json([1.0, 1e39, 60.0])
    v2_false, v2_headers = files.v2_crops(5, valid=False)
    v2_long, v2_long_headers = files.v2_crops(100_000)
    json_ct = {"content-type": "application/json"}

    def upload(c: httpx.Client, data: bytes, model: str = "footprints", **f: str) -> Any:
        return c.post(
            "/predict", data={"model": model, **f}, files={"image": ("a.tif", data, "image/tiff")}
        )

    def footprints(c: httpx.Client, r: random.Random) -> httpx.Response:
        made = upload(c, odd[r.choice(sorted(odd))])
        if made.status_code != 200:
            return made
        params = {"threshold": 0.001, "min_area_px": 0, "simplify_px": 0}
        return c.get(f"/jobs/{made.json()['job_id']}/footprints", params=params)

    return [
        case("h_rgba_alpha", 2, frozenset({200}), lambda c, r: upload(c, rgba)),
        case("h_odd_georef_footprints", 2, frozenset({200, 422}), footprints),
        case(
            "h_dates_100000_brackets",
            1,
            frozenset({422}),
            lambda c, r: upload(c, crops, "crops", dates="[" * 100_000),
        ),
        case(
            "h_days_1e39",
            1,
            frozenset({422}),
            lambda c, r: c.post("/predict", content=days, headers=json_ct),
        ),
        case(
            "h_v2_valid_all_false",
            1,
            frozenset({422}),
            lambda c, r: c.post("/v2/models/crops/infer", content=v2_false, headers=v2_headers),
        ),
        case(
            "h_v2_100000_dates",
            1,
            frozenset({413, 422}),
            lambda c, r: c.post("/v2/models/crops/infer", content=v2_long, headers=v2_long_headers),
        ),
    ]


def run_soak(model_dir: Path, duration_s: float, workers: int = 4) -> dict[str, Any]:
    """Run the mixed soak against a server of its own; the soak's figures."""
    soak = _load_soak()
    base = soak.build_cases
    extra = hostile_cases(soak)
    # Its request mix gains the new cases; the soak itself runs unchanged.
    soak.build_cases = lambda models: base(models) + extra  # type: ignore[attr-defined]
    # Jobs expire after the soak's TTL; the RSS is compared after that warm-up.
    warmup = min(duration_s / 2, soak.JOB_TTL_S + soak.JOB_CLEANUP_S)
    with tempfile.TemporaryDirectory(prefix="attnserve-hostile-soak-", dir="/tmp") as tmp:
        server = soak.start_server(model_dir, Path(tmp) / "jobs", Path(tmp) / "log")
        try:
            url, pid = server.url, server.pid
            result: dict[str, Any] = soak.soak(url, pid, duration_s, workers, 2.0, 0, warmup)
        finally:
            server.stop()
    result["rss_mb"].pop("samples", None)
    return result
