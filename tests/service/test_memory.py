"""Heap trimming, malloc arenas, the garbage collector and the memory budget."""

from __future__ import annotations

import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import Overloaded, PayloadTooLarge
from service.memory import MemoryBudget, Reservation, malloc_trim

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_runs_after_large_frees() -> None:
    trim = malloc_trim()
    assert trim is not None
    blocks = [np.ones(2**20, dtype=np.float32) for _ in range(64)]
    del blocks
    assert trim() in (0, 1)


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from service.memory import limit_malloc_arenas
limit = int(sys.argv[1])
if limit:
    assert limit_malloc_arenas(limit)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(8)
def churn():
    barrier.wait()
    for _ in range(20000):
        libc.free(libc.malloc(1000))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_arena_limit_caps_the_arenas_concurrent_threads_get() -> None:
    def arenas(limit: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _ARENAS_SCRIPT, str(limit)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )  # fmt: skip
        return out.stderr.count("Arena ")

    assert arenas(1) == 1
    assert arenas(0) > 1  # glibc's default gives concurrent threads arenas of their own


_FREEZE_SCRIPT = """
import gc
import service.app  # what a server has imported by the time its models are loaded
from service.memory import tune_gc

frozen = tune_gc((50_000, 20, 100), freeze=True)
gc.disable()
loop = []
loop.append(loop)  # cyclic garbage made after the freeze
del loop
print(frozen, gc.get_freeze_count(), gc.collect(), *gc.get_threshold())
"""


def test_tuning_freezes_startup_objects_and_still_collects_later_garbage() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREEZE_SCRIPT],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    frozen, still_frozen, collected, *threshold = map(int, out.stdout.split())
    assert frozen > 50_000  # the web stack, numpy and GDAL bindings alone
    assert still_frozen == frozen
    assert collected >= 1
    assert threshold == [50_000, 20, 100]


def test_budget_refuses_one_request_over_its_share_naming_the_limit() -> None:
    budget = MemoryBudget(4 * 2**20, 2 * 2**20, wait_s=0.1, setting="ATTNSERVE_X")
    with pytest.raises(PayloadTooLarge) as info:
        budget.reserve(3 * 2**20, "a 10x10 image")
    assert "a 10x10 image needs about 3 MiB" in info.value.message
    assert "limit per request is 2 MiB (ATTNSERVE_X)" in info.value.message
    assert budget.in_use == 0


def test_budget_makes_requests_wait_for_room_and_refuses_after_the_wait() -> None:
    budget = MemoryBudget(3 * 2**20, 2 * 2**20, wait_s=2.0)
    first = budget.reserve(2 * 2**20, "first")
    got: list[Reservation] = []
    waiter = threading.Thread(target=lambda: got.append(budget.reserve(2 * 2**20, "second")))
    waiter.start()
    time.sleep(0.2)
    assert not got  # no room until the first is released
    first.release()
    first.release()  # a second release gives nothing back twice
    waiter.join(5)
    assert budget.in_use == 2 * 2**20
    assert budget.peak == 2 * 2**20
    budget.wait_s = 0.1
    with pytest.raises(Overloaded):
        budget.reserve(2 * 2**20, "third")
    got[0].release()
    assert budget.in_use == 0


def test_jobs_hold_their_share_until_cancelled() -> None:
    budget = MemoryBudget(2 * 2**20, 2 * 2**20)
    held = budget.hold(10 * 2**20, lambda: False)  # capped at one request's share
    assert budget.in_use == 2 * 2**20
    cancelled = threading.Event()
    threading.Timer(0.2, cancelled.set).start()
    empty = budget.hold(2**20, cancelled.is_set)
    assert empty.budget is None  # nothing held, nothing to give back
    held.release()
    assert budget.in_use == 0


def test_the_c_library_is_looked_up_once_not_per_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    # find_library runs `ldconfig -p` in a subprocess: once per large request's
    # release it was a fork and exec of the whole server.
    import ctypes.util

    from service import memory

    calls: list[str] = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda n: calls.append(n) or real(n))
    memory._libc.cache_clear()
    for _ in range(3):
        memory.malloc_trim()
    memory.limit_malloc_arenas(0)
    assert calls == ["c"]
