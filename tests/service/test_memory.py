"""Heap trimming: available on glibc and harmless to call."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.memory import malloc_trim

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
