"""Pooling the bursts of one level: counts and seconds added, percentiles of every sample."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.peers.run import pool


def burst(latencies: list[float], ok: int, wall: float) -> dict[str, Any]:
    statuses = {"200": ok} | ({"503": len(latencies) - ok} if len(latencies) > ok else {})
    return {
        "concurrency": 4, "latencies_ms": latencies, "ok": ok, "statuses": statuses,
        "wall_s": wall, "throughput_rps": ok / wall, "client_cpu_s": 0.1,
        "server_cpu_s": 1.5 * wall,
    }  # fmt: skip


def test_pool_adds_counts_and_takes_percentiles_of_all_samples() -> None:
    fast = [100.0 + i for i in range(90)]
    slow = [1000.0 + 10 * i for i in range(10)]
    row = pool([burst(fast, 90, 9.0), burst(slow, 8, 1.0)])
    assert row["requests"] == 100
    assert row["ok"] == 98
    assert row["errors"] == 2
    assert row["statuses"] == {"200": 98, "503": 2}
    assert row["throughput_rps"] == round(98 / 10.0, 3)  # not the mean of 10.0 and 8.0
    assert row["burst_rps"] == [10.0, 8.0]
    everything = np.array(fast + slow)
    assert row["p50_ms"] == round(float(np.percentile(everything, 50)), 2)
    assert row["p99_ms"] == round(float(np.percentile(everything, 99)), 2)
    assert row["p99_ms"] > 1000.0  # the slow burst's tail is the pooled tail
    assert row["max_ms"] == 1090.0
    assert row["server_cores"] == 1.5
    assert row["server_cpu_ms_per_answer"] == round(1000 * 15.0 / 98, 1)
