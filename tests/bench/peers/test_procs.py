"""A server's process tree, found from /proc."""

from __future__ import annotations

import subprocess
import time

from bench.peers.procs import descendants, parents, sessions, tree_rss_kib
from tests.helpers.server import proc_status_kib


def test_descendants_and_their_memory() -> None:
    # A shell that starts a grandchild in the background and waits on a child.
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30; wait"])
    try:
        for _ in range(100):
            found = descendants(proc.pid)
            if len(found) == 2:
                break
            time.sleep(0.05)
        assert len(found) == 2
        assert all(parents()[p] == proc.pid for p in found)
        own = proc_status_kib(proc.pid, "VmRSS") or 0
        assert tree_rss_kib(proc.pid) > own > 0
    finally:
        proc.kill()
        proc.wait()
        for pid in found:
            subprocess.run(["kill", str(pid)], check=False)
    assert descendants(2**22 + 1) == []


def test_sessions_counts_a_child_that_leads_its_own() -> None:
    proc = subprocess.Popen(["sh", "-c", "setsid sleep 30 & sleep 30; wait"])
    try:
        for _ in range(100):
            if sessions(proc.pid) == 2:
                break
            time.sleep(0.05)
        assert sessions(proc.pid) == 2
        found = descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    for pid in found:
        subprocess.run(["kill", str(pid)], check=False)
