"""Working memory of a session: measured at warm-up, given back after runs larger than it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime.session import ModelSession, SessionOptions, _rss_bytes


@pytest.fixture(scope="module")
def footprints(model_dir: Path) -> ModelSession:
    """The shipped footprints model on CPU, warmed up at a small tile."""
    session = ModelSession(
        next(model_dir.glob("footprints-*.onnx")),
        SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=2),
    )
    session.warmup(sizes=(64,))
    return session


def test_warmup_measures_working_memory_per_pixel(footprints: ModelSession) -> None:
    # The Attention U-Net holds a few hundred bytes of activations per input pixel
    # (263 to 544 on the shipped versions on CPU); no measurement leaves the fallback.
    assert 100 < footprints.activation_per_unit < 2000, footprints.activation_per_unit


@pytest.mark.skipif(_rss_bytes("VmRSS") is None, reason="needs /proc")
def test_a_run_larger_than_warmup_gives_its_arena_growth_back(footprints: ModelSession) -> None:
    before = _rss_bytes("VmRSS")
    assert before is not None
    feed = footprints.example_feed(size=1024)
    outputs = footprints.run(feed)
    assert outputs["probability"].shape[-2:] == (1024, 1024)
    del outputs, feed
    after = _rss_bytes("VmRSS")
    assert after is not None
    # Without shrinking, the arena keeps about 280 MB after a 1024 x 1024 run.
    assert (after - before) / 2**20 < 120
    assert np.isfinite(footprints.activation_per_unit)


class _RunOptionsSpy:
    """Wraps an ONNX Runtime session and records whether each run shrank the arena."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.shrunk: list[bool] = []

    def run(self, names: object, feed: object, options: object = None) -> object:
        self.shrunk.append(options is not None)
        return self.session.run(names, feed, options)  # type: ignore[attr-defined]


def _spied(model_dir: Path, threads: int, warmup: int) -> tuple[ModelSession, _RunOptionsSpy]:
    """The shipped footprints session, warmed up at ``warmup`` px, its runs spied on."""
    session = ModelSession(
        next(model_dir.glob("footprints-*.onnx")),
        SessionOptions(providers=("CPUExecutionProvider",), intra_op_threads=threads),
    )
    session.warmup(sizes=(warmup,), measure=False)
    spy = _RunOptionsSpy(session._session)
    session._session = spy  # type: ignore[assignment]
    return session, spy


@pytest.mark.skipif(_rss_bytes("VmRSS") is None, reason="needs /proc")
def test_a_held_arena_keeps_its_growth_until_the_last_holder_lets_go(model_dir: Path) -> None:
    # A scene job's tiles are larger than the warm-up: held, the arena is not
    # shrunk after each of them (the next run reuses it); when the last holder
    # lets go, one run shrinks it. (How much glibc then hands back to the OS
    # depends on the rest of the process: the shrinking runs are what is checked.)
    session, spy = _spied(model_dir, threads=2, warmup=64)
    feed = session.example_feed(size=512)
    before = _rss_bytes("VmRSS")
    assert before is not None
    first, second = session.hold_arena(), session.hold_arena()
    session.run(feed)
    held = _rss_bytes("VmRSS")
    assert held is not None
    grown = (held - before) / 2**20
    assert grown > 40, f"the run kept only {grown:.0f} MiB"
    first()
    first()  # a release called twice counts once
    session.run(feed)
    assert spy.shrunk == [False, False]
    second()
    assert spy.shrunk == [False, False, True]  # the give-back run
    session.run(feed)
    assert spy.shrunk == [False, False, True, True]  # no holder: large runs shrink again


def test_a_cpu_instance_keeps_its_arena_after_batches_of_its_share(model_dir: Path) -> None:
    session, spy = _spied(model_dir, threads=1, warmup=256)
    session.keep_batches(2)
    for batch in (1, 2, 3):
        session.run(session.example_feed(batch=batch, size=256))
    # Batches of one and two are a helper's own (kept); three is larger (shrunk).
    assert spy.shrunk == [False, False, True]
