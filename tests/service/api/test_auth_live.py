"""API keys: required when configured, jobs private to the key that made them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.service.api.routes.test_predict import _rgb_tiff

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


def test_keys_guard_everything_but_probes_and_jobs_stay_private(
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# mounted secret\n{KEY_B}\n")
    server = start_server(api_keys=json.dumps([KEY_A]), api_keys_file=str(keys_file))
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200
    for path in ("/models", "/attention/AAAAAAAAAAAAAAAAAAAAAAAA", "/docs"):
        resp = httpx.get(server.url + path)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["error"]["code"] == "unauthorized"
    # The viewer's pages carry no data; its data endpoints do and stay guarded.
    assert httpx.get(server.url + "/viewer").status_code == 200
    assert httpx.get(server.url + "/viewer/AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 200
    assert (
        httpx.get(server.url + "/viewer/AAAAAAAAAAAAAAAAAAAAAAAA/layers/gate_1.png").status_code
        == 401
    )
    wrong = httpx.get(server.url + "/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    resp = httpx.post(
        server.url + "/predict",
        data={"model": "footprints"},
        files={"image": ("a.tif", _rgb_tiff(5), "image/tiff")},
        headers=auth(KEY_A),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()["job_id"]
    assert httpx.get(f"{server.url}/attention/{job}", headers=auth(KEY_A)).status_code == 200
    other = httpx.get(f"{server.url}/attention/{job}", headers=auth(KEY_B))
    assert other.status_code == 404
    assert httpx.get(f"{server.url}/jobs/{job}", headers=auth(KEY_B)).status_code == 404
    assert httpx.get(f"{server.url}/models", headers=auth(KEY_B)).status_code == 200
    log = server.log_path.read_text()
    assert KEY_A not in log
    assert KEY_B not in log
