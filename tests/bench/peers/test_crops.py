"""Crops at 16 clients: batching on against off, and the p99 target."""

from __future__ import annotations

from bench.peers import crops


def row(rps: float, p99: float) -> dict[str, float]:
    return {"throughput_rps": rps, "p99_ms": p99}


def test_checks_compare_on_with_off_and_p99_with_the_target() -> None:
    met = {c["name"]: c for c in crops.checks({"on": row(300, 80.0), "off": row(280, 95.0)})}
    assert met["crops batching on >= off at 16 clients"]["ok"]
    assert met["crops batching on >= off at 16 clients"]["value"] == round(300 / 280, 3)
    assert met["crops p99 < 100 ms at 16 clients (batching on)"]["ok"]
    missed = crops.checks({"on": row(250, 106.3), "off": row(267, 88.5)})
    assert [c["ok"] for c in missed] == [False, False]
    assert missed[1]["detail"] == "p99 106.3 ms (off: 88.5 ms)"
