"""Live servers on one S3-API bucket (SeaweedFS): each serves the other's jobs, keys stay apart."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import obstore
import pytest

from service.jobs.objects import connect
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.jobs import follow
from tests.helpers.server import LiveServer

KEY_A = "key-a-of-twenty-characters"
KEY_B = "key-b-of-twenty-characters"
A = {"authorization": f"Bearer {KEY_A}"}
B = {"authorization": f"Bearer {KEY_B}"}
KEYS = json.dumps([KEY_A, KEY_B])


def _keys(url: str, job_id: str) -> set[str]:
    store = connect(url)
    return {m["path"] for batch in obstore.list(store, prefix=f"{job_id}/") for m in batch}


def _get(server: LiveServer, path: str, headers: dict[str, str] = A) -> httpx.Response:
    return httpx.get(server.url + path, headers=headers, timeout=60)


def test_two_servers_on_one_bucket_serve_each_others_jobs(
    s3_store_url: str, start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    first = start_server(job_store=s3_store_url, job_dir=str(tmp_path / "a"), api_keys=KEYS)
    second = start_server(job_store=s3_store_url, job_dir=str(tmp_path / "b"), api_keys=KEYS)
    image = geotiff(noise(size=256, seed=3))

    answer = httpx.post(f"{first.url}/predict", headers=A, timeout=60, **upload(image))
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["job_id"]
    assert _keys(s3_store_url, job_id) == {f"{job_id}/meta.json", f"{job_id}/arrays.npk"}

    again = _get(second, f"/jobs/{job_id}")
    assert again.status_code == 200, again.text
    assert again.json()["prediction"] == answer.json()["prediction"]
    for path in (
        f"/attention/{job_id}?format=geotiff",
        f"/jobs/{job_id}/prediction?format=geotiff",
        f"/jobs/{job_id}/footprints?threshold=0.3",
    ):
        mine, theirs = _get(first, path), _get(second, path)
        assert theirs.status_code == 200, (path, theirs.text)
        assert theirs.content == mine.content, path
    gates = _get(second, f"/attention/{job_id}").json()["layers"]
    assert gates, "the attention listing is empty"
    for path in (f"/jobs/{job_id}", f"/attention/{job_id}", f"/jobs/{job_id}/footprints"):
        assert _get(second, path, B).status_code == 404, path  # another key's job is not there

    scene = httpx.post(
        f"{first.url}/predict", headers=A, timeout=60, **upload(image, **{"async": "true"})
    )
    assert scene.status_code == 202, scene.text
    scene_id = scene.json()["job_id"]
    done, _ = follow(second, scene_id, 120, A)  # the other server sees its progress and its end
    assert done["state"] == "done", done
    files = sorted(k.split("/")[1] for k in _keys(s3_store_url, scene_id))
    assert "meta.json" in files
    assert "input_0.tif" in files
    outputs = [url for name, url in done["links"].items() if "/files/" in url]
    assert outputs, done["links"]
    for url in outputs:
        assert url.rsplit("/", 1)[1] in files
        mine, theirs = _get(first, url), _get(second, url)
        assert theirs.status_code == 200, theirs.text
        assert theirs.content == mine.content
        ranged = httpx.get(second.url + url, headers={**A, "range": "bytes=100-199"})
        assert ranged.status_code == 206
        assert ranged.content == mine.content[100:200]
    assert _get(second, f"/jobs/{scene_id}/footprints").status_code == 200
    assert _get(second, outputs[0], B).status_code == 404

    deleted = httpx.delete(f"{second.url}/jobs/{job_id}", headers=A)
    assert deleted.status_code == 200, deleted.text
    assert _get(first, f"/jobs/{job_id}").status_code == 404
    assert _keys(s3_store_url, job_id) == set()


def test_presigned_downloads_redirect_to_the_bucket(
    s3_store_url: str, start_server: Callable[..., LiveServer]
) -> None:
    server = start_server(job_store=s3_store_url, presign="true")
    scene = httpx.post(
        f"{server.url}/predict", timeout=60, **upload(geotiff(noise(size=128)), **{"async": "true"})
    )
    done, _ = follow(server, scene.json()["job_id"])
    url = next(url for url in done["links"].values() if "/files/" in url)
    redirect = httpx.get(server.url + url)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(os.environ["AWS_ENDPOINT_URL"])
    cog = httpx.get(location)
    assert cog.status_code == 200
    assert cog.content[:4] == b"II*\x00"


def test_ttl_and_eviction_delete_the_objects(
    s3_store_url: str, start_server: Callable[..., LiveServer]
) -> None:
    server = start_server(
        job_store=s3_store_url, job_ttl_s="4", job_cleanup_interval_s="1", job_max_mb="1.5"
    )
    ids = []
    for seed in range(3):  # about 0.6 MB each: 1.5 MB hold two
        answer = httpx.post(
            f"{server.url}/predict", timeout=60, **upload(geotiff(noise(size=256, seed=seed)))
        )
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["job_id"])
    sizes = [sum(1 for _ in _keys(s3_store_url, i)) for i in ids]
    assert sizes[0] == 0, "the oldest job was not evicted to make room"
    assert sizes[-1] == 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_keys(s3_store_url, i) for i in ids):
        time.sleep(0.5)
    assert [_keys(s3_store_url, i) for i in ids] == [set(), set(), set()]
    assert httpx.get(f"{server.url}/jobs/{ids[-1]}").status_code == 404
    metrics = httpx.get(f"{server.url}/metrics").text
    evicted = [ln for ln in metrics.splitlines() if ln.startswith("attnserve_jobs_evicted_total")]
    assert evicted, metrics[:500]
    assert float(evicted[0].split()[-1]) >= 1


@pytest.mark.slow
def test_a_job_killed_with_its_server_is_never_half_visible_and_resumes_on_another(
    s3_store_url: str, start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    first = start_server(job_store=s3_store_url, job_dir=str(tmp_path / "a"))
    image = geotiff(noise(size=1024, seed=5))
    scene = httpx.post(
        f"{first.url}/predict", timeout=60, **upload(image, **{"async": "true", "tile_size": "256"})
    )
    assert scene.status_code == 202, scene.text
    job_id = scene.json()["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(f"{first.url}/jobs/{job_id}").json()
        if body["progress"].get("done", 0) > 0:
            break
        time.sleep(0.05)
    assert body["state"] == "running", body
    first.proc.kill()  # SIGKILL: no cleanup, no final write
    first.proc.wait()
    # Its record says running and no output was uploaded: nothing half-made is served.
    left = {key.split("/")[1] for key in _keys(s3_store_url, job_id)}
    assert left == {"meta.json", "input_0.tif"}

    second = start_server(job_store=s3_store_url, job_dir=str(tmp_path / "b"))
    done, _ = follow(second, job_id, 120)
    assert done["state"] == "done", done
    meta = json.loads(bytes(obstore.get(connect(s3_store_url), f"{job_id}/meta.json").bytes()))
    assert meta["resumed"] == 1
    outputs = [url for url in done["links"].values() if "/files/" in url]
    assert outputs
    for url in outputs:
        assert httpx.get(second.url + url).status_code == 200
    assert not (tmp_path / "b" / job_id).exists()  # the scratch is gone once uploaded
