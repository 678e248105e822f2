"""A server's process tree from ``/proc``: who it spawned, and their memory together."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.server import proc_status_kib


def parents(proc: Path = Path("/proc")) -> dict[int, int]:
    """Every process's parent id, from ``/proc/<pid>/stat``."""
    out: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int, tree: dict[int, int] | None = None) -> list[int]:
    """Every process below ``pid``, nearest first."""
    tree = parents() if tree is None else tree
    children: dict[int, list[int]] = {}
    for child, parent in tree.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo += children.get(p, [])
    return found


def tree_rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` and everything below it, added up (shared pages once per process)."""
    return sum(proc_status_kib(p, "VmRSS") or 0 for p in [pid, *descendants(pid)])


def sessions(pid: int) -> int:
    """Sessions (``setsid``) that ``pid`` and everything below it belong to.

    Where the kernel schedules by autogroup, each session is a group that gets
    as much CPU as any other session while the cores are contended.
    """
    found = set()
    for p in [pid, *descendants(pid)]:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        found.add(int(stat.rsplit(")", 1)[1].split()[3]))
    return len(found)


def autogroup() -> bool | None:
    """Whether the kernel schedules by autogroup (None where it does not say)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None
