"""The dynamic batcher: grouping, routing, limits, deadlines and failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.errors import DeadlineExceeded, InferenceFailed, Overloaded
from service.runtime.batcher import DynamicBatcher
from service.runtime.feeds import Feed, Padding


class Recorder:
    """A batch observer that keeps what it is told."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.failed = 0

    def queue_depth(self, depth: int) -> None:
        pass

    def batch_done(self, rows: int, waits_s: Sequence[float], run_s: float) -> None:
        self.batches.append(rows)

    def batch_failed(self, rows: int) -> None:
        self.failed += 1


def double(feed: Feed) -> Feed:
    time.sleep(0.01)
    return {"y": feed["x"] * 2, "s": feed["x"].sum(axis=tuple(range(1, feed["x"].ndim)))}


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _doubler(rec: Recorder) -> DynamicBatcher:
    """A batcher of ``double``: batches of up to 8 gathered for 20 ms, 64 queued."""
    return DynamicBatcher(
        "m", double, max_batch_size=8, max_queue_delay_ms=20, max_queue_size=64, observer=rec
    )


def test_concurrent_requests_share_batches_and_get_their_own_rows() -> None:
    rec = Recorder()

    async def main() -> list[Feed]:
        b = _doubler(rec)
        await b.start()
        inputs = [np.full((1, 3), i, dtype=np.float32) for i in range(32)]
        outs = await asyncio.gather(*(b.submit({"x": x}, 5) for x in inputs))
        await b.stop()
        return list(outs)

    outs = run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full((1, 3), 2 * i))
        assert out["s"].shape == (1,)
    assert max(rec.batches) > 1
    assert max(rec.batches) <= 8
    assert sum(rec.batches) == 32


def test_large_request_is_split_into_chunks_and_reassembled_in_order() -> None:
    rec = Recorder()

    async def main() -> Feed:
        b = DynamicBatcher(
            "m", double, max_batch_size=4, max_queue_delay_ms=1, max_queue_size=2, observer=rec
        )
        await b.start()
        out = await b.submit({"x": np.arange(22, dtype=np.float32)[:, None]}, 5)
        await b.stop()
        return out

    out = run(main())
    np.testing.assert_array_equal(out["y"][:, 0], np.arange(22) * 2)
    assert max(rec.batches) <= 4


def test_requests_of_different_shapes_are_not_mixed() -> None:
    rec = Recorder()

    async def main() -> list[Feed]:
        b = _doubler(rec)
        await b.start()
        small = [np.ones((1, 2, 2), np.float32) * i for i in range(3)]
        big = [np.ones((1, 4, 4), np.float32) * i for i in range(3)]
        outs = await asyncio.gather(*(b.submit({"x": x}, 5) for x in small + big))
        await b.stop()
        return list(outs)

    outs = run(main())
    assert [o["y"].shape for o in outs] == [(1, 2, 2)] * 3 + [(1, 4, 4)] * 3
    assert sorted(rec.batches) == [3, 3]


def test_padding_lets_series_of_different_lengths_share_a_batch() -> None:
    rec = Recorder()
    seen: list[tuple[int, ...]] = []

    def model(feed: Feed) -> Feed:
        seen.append(feed["series"].shape)
        weights = feed["valid"].astype(np.float32)
        weights /= weights.sum(axis=1, keepdims=True)
        return {"att": weights[:, None, :], "p": feed["series"].sum(axis=(1, 2))[:, None]}

    padding = Padding(inputs={"series": (1, 0.0), "valid": (1, False)}, outputs={"att": 2})

    async def main() -> list[Feed]:
        b = DynamicBatcher(
            "m",
            model,
            max_batch_size=16,
            max_queue_delay_ms=20,
            max_queue_size=8,
            padding=padding,
            observer=rec,
        )
        await b.start()
        feeds = [
            {"series": np.ones((2, t, 3), np.float32), "valid": np.ones((2, t), bool)}
            for t in (3, 5, 7)
        ]
        outs = await asyncio.gather(*(b.submit(f, 5) for f in feeds))
        await b.stop()
        return list(outs)

    outs = run(main())
    assert rec.batches == [6]
    assert seen == [(6, 7, 3)]
    for out, t in zip(outs, (3, 5, 7), strict=True):
        assert out["att"].shape == (2, 1, t)
        np.testing.assert_allclose(out["att"].sum(axis=2), 1.0)
        np.testing.assert_allclose(out["p"][:, 0], 3 * t)


def test_full_queue_refuses_with_retry_after() -> None:
    release = threading.Event()

    def blocked(feed: Feed) -> Feed:
        release.wait(5)
        return {"y": feed["x"]}

    async def main() -> list[object]:
        b = DynamicBatcher("m", blocked, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2)
        await b.start()
        tasks = [asyncio.ensure_future(b.submit({"x": np.zeros((1, 1))}, 10)) for _ in range(6)]
        await asyncio.sleep(0.2)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return results

    results = run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert refused, results
    assert served
    assert len(refused) + len(served) == 6
    assert all(r.retry_after_s >= 1 for r in refused)


def test_deadline_gives_deadline_exceeded_and_the_batcher_goes_on() -> None:
    def slow(feed: Feed) -> Feed:
        time.sleep(0.3)
        return {"y": feed["x"]}

    async def main() -> tuple[object, Feed]:
        b = DynamicBatcher("m", slow, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=8)
        await b.start()
        first = asyncio.ensure_future(b.submit({"x": np.zeros((1, 1))}, 5))
        late = await asyncio.gather(b.submit({"x": np.ones((1, 1))}, 0.1), return_exceptions=True)
        await first
        after = await b.submit({"x": np.full((1, 1), 7.0)}, 5)
        await b.stop()
        return late[0], after

    late, after = run(main())
    assert isinstance(late, DeadlineExceeded)
    assert after["y"][0, 0] == 7.0


def test_session_failure_fails_that_batch_only() -> None:
    rec = Recorder()
    calls = {"n": 0}

    def flaky(feed: Feed) -> Feed:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return {"y": feed["x"]}

    async def main() -> tuple[list[object], Feed]:
        b = DynamicBatcher(
            "m", flaky, max_batch_size=4, max_queue_delay_ms=20, max_queue_size=8, observer=rec
        )
        await b.start()
        first = await asyncio.gather(
            *(b.submit({"x": np.zeros((1, 1))}, 5) for _ in range(3)), return_exceptions=True
        )
        after = await b.submit({"x": np.ones((1, 1))}, 5)
        await b.stop()
        return list(first), after

    first, after = run(main())
    assert all(isinstance(r, InferenceFailed) for r in first)
    assert after["y"][0, 0] == 1.0
    assert rec.failed == 1


def test_mismatched_batch_sizes_are_a_programming_error() -> None:
    async def main() -> None:
        b = DynamicBatcher("m", double, max_batch_size=4, max_queue_delay_ms=0, max_queue_size=8)
        await b.start()
        try:
            await b.submit({"x": np.zeros((2, 1)), "z": np.zeros((3, 1))}, 1)
        finally:
            await b.stop()

    with pytest.raises(ValueError, match="disagree"):
        run(main())


def test_a_lone_client_does_not_wait_for_company_but_concurrent_ones_still_batch() -> None:
    rec = Recorder()
    delay_ms = 200

    async def main() -> tuple[list[float], int]:
        b = DynamicBatcher(
            "m", double, max_batch_size=8, max_queue_delay_ms=delay_ms, max_queue_size=64,
            observer=rec,
        )  # fmt: skip
        await b.start()
        x = np.ones((1, 3), np.float32)
        await b.submit({"x": x}, 5)  # the first request waits: nothing is known yet
        took = []
        for _ in range(3):
            t = time.monotonic()
            await b.submit({"x": x}, 5)
            took.append(time.monotonic() - t)
        # Company again: concurrent requests batch together as before.
        outs = await asyncio.gather(*(b.submit({"x": x}, 5) for _ in range(4)))
        await b.stop()
        return took, len(outs)

    took, n = run(main())
    assert max(took) < delay_ms / 1000 / 2, took
    assert n == 4
    assert rec.batches[:4] == [1, 1, 1, 1]
    assert max(rec.batches[4:]) > 1


class Instances:
    """Run functions that record which instance ran when, and how many rows."""

    def __init__(self, helpers: int, fail: str | None = None) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, float, float, int]] = []
        self.fail = fail
        self.main = self._make("main")
        self.helpers = [self._make(f"h{i}") for i in range(helpers)]

    def _make(self, name: str):  # type: ignore[no-untyped-def]
        def run_fn(feed: Feed) -> Feed:
            start = time.monotonic()
            time.sleep(0.03)
            if name == self.fail:
                raise RuntimeError("kernel failed")
            with self.lock:
                self.spans.append((name, start, time.monotonic(), len(feed["x"])))
            return {"y": feed["x"] * 2}

        return run_fn

    def overlapping(self, a: str, b: str) -> bool:
        return any(
            s1 < e2 and s2 < e1
            for n1, s1, e1, _ in self.spans
            if n1.startswith(a)
            for n2, s2, e2, _ in self.spans
            if n2.startswith(b) and (n1, s1) != (n2, s2)
        )


def _instances_batcher(inst: Instances, max_batch_size: int = 4) -> DynamicBatcher:
    return DynamicBatcher(
        "m",
        inst.main,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=1,
        max_queue_size=64,
        helpers=inst.helpers,
    )


def test_a_lone_request_runs_on_the_main_session_queued_ones_on_helpers_side_by_side() -> None:
    inst = Instances(helpers=2)

    async def main() -> list[Feed]:
        b = _instances_batcher(inst)
        await b.start()
        alone = [await b.submit({"x": np.full((1, 2), 7.0, np.float32)}, 5) for _ in range(3)]
        crowd = await asyncio.gather(
            *(b.submit({"x": np.full((1, 2), i, np.float32)}, 5) for i in range(24))
        )
        await b.stop()
        return alone + list(crowd)

    outs = run(main())
    for out in outs[:3]:
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 14.0))
    for i, out in enumerate(outs[3:]):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2.0 * i))
    names = [n for n, *_ in inst.spans]
    # One after another, the lone requests ran on the main session, with every core.
    assert names[:3] == ["main"] * 3
    # The crowd ran on both helpers at once, never beside the main session.
    assert {"h0", "h1"} <= set(names[3:])
    assert inst.overlapping("h", "h")
    assert not inst.overlapping("main", "h")
    # Each helper batch holds at most its share of max_batch_size (4 // 2).
    assert max(rows for n, *_, rows in inst.spans if n != "main") <= 2
    assert sum(rows for *_, rows in inst.spans) == 27


def test_a_failing_helper_fails_only_its_own_batch() -> None:
    inst = Instances(helpers=2, fail="h1")

    async def main() -> list[object]:
        b = _instances_batcher(inst, max_batch_size=2)
        await b.start()
        results = await asyncio.gather(
            *(b.submit({"x": np.full((1, 2), i, np.float32)}, 5) for i in range(12)),
            return_exceptions=True,
        )
        await b.stop()
        return list(results)

    results = run(main())
    failed = [r for r in results if isinstance(r, InferenceFailed)]
    served = [r for r in results if isinstance(r, dict)]
    assert failed
    assert served
    assert len(failed) + len(served) == 12
    for r in served:
        assert r["y"].shape == (1, 2)


def test_stopping_finishes_the_batches_helpers_are_running() -> None:
    inst = Instances(helpers=2)

    async def main() -> list[Feed]:
        b = _instances_batcher(inst)
        await b.start()
        tasks = [
            asyncio.ensure_future(b.submit({"x": np.full((1, 2), i, np.float32)}, 5))
            for i in range(8)
        ]
        await asyncio.sleep(0.01)  # the first batches are running
        await b.stop(grace_s=5)
        return list(await asyncio.gather(*tasks))

    outs = run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2.0 * i))
