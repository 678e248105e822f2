"""attnserve beside its peers, in one run: the same footprints model, the same tile.

``python -m bench.peers.run`` (``make bench-peers``; ``make bench`` runs it after
``bench.run``) measures on 127.0.0.1:

- the raw ONNX Runtime session on the tile (the limit), again in every round;
- attnserve (``python -m service``, its defaults, and with one CPU instance);
- a hand-written FastAPI + ONNX Runtime server without batching;
- Ray Serve with ``@serve.batch``;
- BentoML with adaptive batching.

Each peer runs in its own virtual environment (``bench.peers.venvs``); a peer
that cannot be installed or started is reported with the reason and the others
still run. Every server gets the same multipart upload from the same load
generator (``bench.load``, a separate process) at 1, 4 and 16 clients.

The machine's cores are shared with other people's work, whose load comes and
goes by the minute; so the servers are started together and then loaded one
after the other in short bursts, round after round (each round in another
order), and each server's bursts at a level are pooled: every server meets the
same spread of neighbours' load. Idle servers wait; their background CPU use is
measured and reported.

The figures go into ``bench/results.json`` (key ``peers``) and the Peers section
of ``bench/results.md``. Where attnserve is slower at saturation than a peer, or
its p99 at 16 clients is higher, py-spy profiles it under that load and the
summary is written beside this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import raw
from bench.machine import load_average, machine
from bench.peers import crops, report, venvs
from bench.peers.procs import autogroup, descendants, sessions, tree_rss_kib
from bench.run import COMMON_ENV, REPO, SOURCE, footprints_tile, run_load, say
from service.app import session_options
from service.config import SHIPPED_MODELS, Settings
from service.runtime.cpus import usable_cpus
from service.runtime.session import ModelSession
from tests.helpers.server import LiveServer, serve_command

MODEL = SHIPPED_MODELS / "footprints-2.2.0.onnx"
PROFILE_DIR = REPO / "bench" / "peers"


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    concurrency: tuple[int, ...] = (1, 4, 16)
    rounds: int = 3
    burst_s: float = 10.0
    raw_s: float = 1.0
    profile_requests: int = 48
    crops_s: float = 15.0
    idle_s: float = 5.0


FULL = Plan()
QUICK = Plan(
    concurrency=(1, 4),
    rounds=1,
    burst_s=1.0,
    raw_s=0.3,
    profile_requests=8,
    crops_s=1.0,
    idle_s=0.5,
)


@dataclass(frozen=True)
class System:
    """A server under test: how to start it and what it answers."""

    name: str
    returns: str
    command: Callable[[Path, int], list[str]]
    venv: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    notes: str = ""


def _module(module: str) -> Callable[[Path, int], list[str]]:
    # setsid: the server leads a process group of its own, whatever it spawns.
    return lambda python, port: ["setsid", str(python), "-m", module, "--port", str(port)]


def _attnserve(_: Path, port: int) -> list[str]:
    # In a session of its own, as every peer: see ``sessions`` in bench.peers.procs.
    return ["setsid", *serve_command(port)]


def _bento(python: Path, port: int) -> list[str]:
    return ["setsid", str(python), "-m", "bentoml", "serve", "bench.peers.bento_peer:Footprints",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


ATTNSERVE_RETURNS = (
    "JSON: probability statistics, attention summary (4 gates, band weights) and links; "
    "probability and attention stored as a job"
)
PEER_RETURNS = "probability only (512 x 512 float32 bytes)"
SYSTEMS = (
    System(
        "attnserve",
        ATTNSERVE_RETURNS,
        _attnserve,
        notes="defaults: dynamic batcher (4 tiles, 5 ms), 2 CPU instances",
    ),
    System(
        "attnserve, 1 CPU instance",
        ATTNSERVE_RETURNS,
        _attnserve,
        env={"ATTNSERVE_CPU_INSTANCES": "1"},
        notes="one session with every core, as each peer has",
    ),
    System(
        "attnserve, job write-behind",
        ATTNSERVE_RETURNS,
        _attnserve,
        env={"ATTNSERVE_JOB_WRITE_BEHIND": "true"},
        notes="answers before the job is on disk (fsync still on), to show what waiting "
        "for the job store costs",
    ),
    System(
        "FastAPI + ORT (hand-written)",
        PEER_RETURNS,
        _module("bench.peers.hand_fastapi"),
        venv="fastapi",
        notes="no batching; each request runs the session in the thread pool",
    ),
    System(
        "Ray Serve",
        PEER_RETURNS,
        _module("bench.peers.ray_peer"),
        venv="ray",
        env={"RAY_USAGE_STATS_ENABLED": "0"},
        notes="1 replica, @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)",
    ),
    System(
        "BentoML",
        PEER_RETURNS,
        _bento,
        venv="bentoml",
        env={"BENTOML_DO_NOT_TRACK": "True"},
        notes="front service + model service (batchable, max_batch_size=4), 1 worker each",
    ),
)


class Limit:
    """The raw session on the benchmark's tile: the server's own options, and 2 x 1 thread."""

    def __init__(self, tile: Path, seconds: float) -> None:
        options = session_options(Settings())
        self.seconds = seconds
        self.session = ModelSession(MODEL, options)
        half = dataclasses.replace(options, intra_op_threads=1)
        self.pair = [ModelSession(MODEL, half) for _ in range(2)]
        import rasterio

        with rasterio.open(tile) as ds:
            image = ds.read().astype(np.float32)
        manifest = self.session.manifest
        self.feeds = {b: raw.image_feed(manifest, np.stack([image] * b)) for b in (1, 4)}

    def measure(self) -> dict[str, Any]:
        """Batch 1 and 4 in one session, and two 1-thread sessions side by side, now."""
        out: dict[str, Any] = {
            f"batch_{b}": raw.measure(self.session, feed, 1, self.seconds, 3)
            for b, feed in self.feeds.items()
        }
        out["side_by_side"] = raw.measure_side_by_side(self.pair, self.feeds[1], 1, self.seconds)
        out["best_per_s"] = max(
            out["batch_1"]["throughput_per_s"],
            out["batch_4"]["throughput_per_s"],
            out["side_by_side"]["throughput_per_s"],
        )
        return out


def _first_answer(url: str, tile: bytes, system: System) -> dict[str, Any]:
    """One request by hand: what the server answers, checked."""
    r = httpx.post(
        f"{url}/predict",
        data={"model": "footprints"},
        files={"image": ("tile.tif", tile, "image/tiff")},
        timeout=120,
    )
    answer: dict[str, Any] = {"status": r.status_code, "bytes": len(r.content)}
    if system.venv is None:
        body = r.json() if r.status_code == 200 else {}
        answer["attention_layers"] = len(body.get("attention", []))
        answer["ok"] = r.status_code == 200 and "job_id" in body
    else:
        answer["ok"] = r.status_code == 200 and len(r.content) == 512 * 512 * 4
    return answer


@dataclass
class Running:
    """A started server and what is known of it so far."""

    system: System
    server: LiveServer | None
    result: dict[str, Any]


def start_system(system: System, work: Path, tile: bytes) -> Running:
    """Make the peer's environment, start the server, check one answer, warm it."""
    result: dict[str, Any] = {"returns": system.returns, "notes": system.notes}
    python = Path(sys.executable)
    if system.venv is not None:
        venv = venvs.ensure(system.venv, work / f"pip-{system.venv}.log")
        result["pins"] = list(venv.pins)
        if venv.python is None:
            result["error"] = venv.error
            return Running(system, None, result)
        python = venv.python
    slug = "".join(ch if ch.isalnum() else "-" for ch in system.name.lower())
    env = {**COMMON_ENV, **system.env, "ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS)}
    env["ATTNSERVE_JOB_DIR"] = str(work / f"jobs-{slug}")
    started = time.perf_counter()
    server = LiveServer(
        env, work / f"{slug}.log", command=lambda port: system.command(python, port)
    )
    try:
        server.wait_ready(timeout_s=300)
    except (RuntimeError, TimeoutError) as exc:
        result["error"] = f"did not start: {str(exc)[-800:]}"
        return Running(system, None, result)
    result["start_s"] = round(time.perf_counter() - started, 1)
    result["first_answer"] = _first_answer(server.url, tile, system)
    run_load(server, work / "footprints.request.json", 2, 0, 4)  # warm the path
    return Running(system, server, result)


def pool(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """Bursts at one concurrency as one row: counts and seconds added, percentiles of all."""
    lat = np.concatenate([np.asarray(b["latencies_ms"], dtype=np.float64) for b in bursts])
    statuses: dict[str, int] = {}
    for b in bursts:
        for k, v in b["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    ok = sum(b["ok"] for b in bursts)
    wall = sum(b["wall_s"] for b in bursts)
    return {
        "concurrency": bursts[0]["concurrency"],
        "bursts": len(bursts),
        "requests": int(lat.size),
        "ok": ok,
        "errors": int(lat.size) - ok,
        "statuses": statuses,
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 3) if wall else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "max_ms": round(float(lat.max()), 2),
        "client_cpu_s": round(sum(b["client_cpu_s"] for b in bursts), 3),
        "burst_rps": [b["throughput_rps"] for b in bursts],
        **_cpu(bursts, ok, wall),
    }


def _cpu(bursts: list[dict[str, Any]], ok: int, wall: float) -> dict[str, float]:
    """The server's CPU over the bursts: seconds per answer, and cores it got meanwhile."""
    if not all("server_cpu_s" in b for b in bursts):
        return {}
    cpu = sum(b["server_cpu_s"] for b in bursts)
    return {
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_answer": round(1000 * cpu / max(ok, 1), 1),
        "server_cores": round(cpu / wall, 2) if wall else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and everything below it, so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, and what waited-for children that have exited used
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / tick


def idle_cpu(running: list[Running], seconds: float) -> dict[str, float]:
    """Each server's CPU use, in % of one core, while none has work."""
    pids = {r.system.name: r.server.proc.pid for r in running if r.server is not None}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {
        name: round(100 * (cpu_seconds(pid) - before[name]) / seconds, 1)
        for name, pid in pids.items()
    }


def interleave(
    running: list[Running], plan: Plan, spec: Path, limit: Limit
) -> dict[str, list[dict[str, Any]]]:
    """Each level: rounds of one burst per server, the order rotated each round; pooled."""
    live = [r for r in running if r.server is not None]
    rows: dict[str, list[dict[str, Any]]] = {r.system.name: [] for r in live}
    for c in plan.concurrency:
        bursts: dict[str, list[dict[str, Any]]] = {r.system.name: [] for r in live}
        raws, loads = [], []
        for i in range(plan.rounds):
            raws.append(limit.measure())
            loads.append(load_average()[0])
            shift = i % len(live)
            for r in live[shift:] + live[:shift]:
                assert r.server is not None
                cpu0 = cpu_seconds(r.server.proc.pid)
                b = run_load(r.server, spec, c, plan.burst_s, c, samples=True)
                b["server_cpu_s"] = round(cpu_seconds(r.server.proc.pid) - cpu0, 2)
                bursts[r.system.name].append(b)
            say(
                f"  c={c} round {i + 1}/{plan.rounds}: raw {raws[-1]['best_per_s']:.2f} tiles/s; "
                + ", ".join(f"{n} {b[-1]['throughput_rps']:.2f}" for n, b in bursts.items())
            )
        for r in live:
            assert r.server is not None
            row = pool(bursts[r.system.name])
            row["raw_now"] = {
                "best_per_s": round(float(np.mean([x["best_per_s"] for x in raws])), 3),
                "rounds": [x["best_per_s"] for x in raws],
            }
            row["load_average"] = [round(float(np.mean(loads)), 2)]
            row["server_rss_mib"] = round(tree_rss_kib(r.server.proc.pid) / 1024, 1)
            rows[r.system.name].append(row)
            say(
                f"  {r.system.name} c={c}: {row['throughput_rps']:.2f} req/s, p50 "
                f"{row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, errors {row['errors']}"
            )
    return rows


def stop_tree(server: LiveServer) -> None:
    """SIGTERM the server; then SIGKILL whatever it spawned that outlived it."""
    spawned = descendants(server.proc.pid)
    server.stop(timeout_s=60)
    for pid in spawned:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def profile_attnserve(plan: Plan, work: Path, spec: Path, concurrency: int) -> Path:
    """py-spy on attnserve (defaults) at ``concurrency`` clients; the summary's path."""
    from bench.profile import profile_load, summarise

    # py-spy comes with the project's environment, whose bin/ need not be on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**COMMON_ENV, "ATTNSERVE_MODEL_DIR": str(SHIPPED_MODELS)}
    env["ATTNSERVE_JOB_DIR"] = str(work / "jobs-profile")
    out = PROFILE_DIR / f"profile-attnserve-c{concurrency}.txt"
    with LiveServer(env, work / "profile.log") as server:
        run_load(server, spec, 2, 0, 4)
        raw_file = work / "attnserve.raw"
        load = profile_load(server, spec, raw_file, plan.profile_requests, concurrency)
        waits = work / "attnserve-idle.raw"
        profile_load(server, spec, waits, plan.profile_requests, concurrency, idle=True)
        title = (
            f"attnserve footprints /predict at {concurrency} clients (peers benchmark): "
            f"{plan.profile_requests} requests, {load['throughput_rps']} req/s, p99 "
            f"{load['p99_ms']} ms, load average {load_average()}, git {machine()['attnserve_git']}"
        )
        out.write_text(
            summarise(raw_file, title)
            + "\n"
            + summarise(waits, "The same load again, waiting threads included (--idle)", 15)
        )
    return out


def run(plan: Plan, only: list[str] | None, out_dir: Path | None, profile: bool) -> dict[str, Any]:
    """Every system, one after the other; the results merged into ``out_dir``'s files."""
    with tempfile.TemporaryDirectory(prefix="attnserve-peers-") as tmp:
        work = Path(tmp)
        tile_path = work / "tile512.tif"
        tile = footprints_tile(tile_path)
        spec = work / "footprints.request.json"
        spec.write_text(
            json.dumps({"kind": "multipart", "fields": {"model": "footprints"},
                        "file": str(tile_path)})
        )  # fmt: skip
        results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "usable_cpus": usable_cpus(),
            "sched_autogroup": autogroup(),
            "load_average_start": load_average(),
            "plan": plan.__dict__,
            "tile": f"512 x 512 RGB deflate GeoTIFF of {SOURCE.name} ({len(tile)} bytes)",
        }
        say(f"peers: {results['machine']['cpu']}, load {results['load_average_start']}")
        limit = Limit(tile_path, plan.raw_s)
        results["raw"] = limit.measure()
        say(f"  raw session: best {results['raw']['best_per_s']:.2f} tiles/s")
        chosen = [
            system for system in SYSTEMS
            if not only or any(o.lower() in system.name.lower() for o in only)
        ]  # fmt: skip
        running: list[Running] = []
        try:
            for system in chosen:
                say(f"starting {system.name}")
                running.append(start_system(system, work, tile))
                if "error" in running[-1].result:
                    say(f"  {system.name}: {running[-1].result['error'][:300]}")
            results["idle_cpu_pct"] = idle_cpu(running, plan.idle_s)
            results["sessions"] = {
                r.system.name: sessions(r.server.proc.pid) for r in running if r.server
            }
            say(f"  idle CPU, % of a core: {results['idle_cpu_pct']}")
            rows = interleave(running, plan, spec, limit)
        finally:
            for r in running:
                if r.server is not None:
                    stop_tree(r.server)
        results["systems"] = {
            r.system.name: {**r.result, **({"rows": rows[r.system.name]} if r.server else {})}
            for r in running
        }
        for r in running:
            if r.server and any(row["errors"] for row in rows[r.system.name]):
                # What the server said about its errors, before the work folder goes.
                r.result["log_tail"] = r.server.log_path.read_text(errors="replace")[-3000:]
                results["systems"][r.system.name]["log_tail"] = r.result["log_tail"]
        results["checks"] = report.checks(results)
        if profile and not all(c["ok"] for c in results["checks"]):
            c = max(plan.concurrency)
            say(f"profiling attnserve at {c} clients")
            path = profile_attnserve(plan, work, spec, c)
            results["profile"] = str(path.relative_to(REPO))
        if plan.crops_s and (not only or "crops" in only):
            say("attnserve crops at 16 clients, batching on and off")
            results["crops"] = crops.measure(work, plan.crops_s)
        results["load_average_end"] = load_average()
    if out_dir is not None:
        report.merge(results, out_dir)
        say(f"wrote the Peers section of {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    for check in results["checks"] + results.get("crops", {}).get("checks", []):
        say(f"{'PASS' if check['ok'] else 'MISS'} {check['name']}: {check['detail']}")
    return results


def main() -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.peers.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds per server")
    parser.add_argument("--only", action="append", help="systems whose name contains this")
    parser.add_argument("--out", type=Path, default=None, help="results directory (bench/)")
    parser.add_argument("--no-profile", action="store_true", help="never run py-spy")
    parser.add_argument("--rounds", type=int, help="bursts per server and level (3; quick 1)")
    args = parser.parse_args()
    out = args.out if args.out is not None else (None if args.quick else REPO / "bench")
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    run(plan, args.only, out, not args.no_profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
