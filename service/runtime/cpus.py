"""How many CPUs this process may use: its affinity, capped by a cgroup CPU quota.

ONNX Runtime sizes its default thread pool from the host's cores and GDAL's
``ALL_CPUS`` counts them too; neither reads a container's CPU quota. A pod
limited to 2 CPUs on a 64-core node would then split every operator over 64
threads that the kernel throttles in turn, and each operator waits for its
slowest slice. The server sizes its pools from :func:`cpu_budget` instead.

Reads only ``/proc`` and ``/sys``, with the standard library: no dependency
(the runtime must import with onnxruntime and numpy alone).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# Where cgroup v1 mounts the cpu controller, by distribution.
_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs this process may use.

    Attributes:
        host: CPUs the machine has (``os.cpu_count()``).
        affinity: CPUs the scheduler lets this process run on (cpusets, taskset).
        quota: the tightest cgroup CPU quota over this process's cgroup and its
            parents, in CPUs (e.g. 1.5); None when there is none.
    """

    host: int
    affinity: int
    quota: float | None = None

    @property
    def usable(self) -> int:
        """Whole CPUs to size thread pools by: the affinity, capped by the quota (at least 1).

        A fractional quota rounds down: a thread more than the quota pays for
        is throttled, and every operator split across threads waits for it.
        """
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota)))

    @property
    def limited(self) -> bool:
        """Whether a quota or an affinity mask leaves this process fewer CPUs than the host."""
        return self.usable < self.host

    def to_json(self) -> dict[str, int | float | None]:
        """The budget as JSON-ready values."""
        return {
            "usable": self.usable,
            "host": self.host,
            "affinity": self.affinity,
            "cgroup_quota": self.quota,
        }


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(text: str | None) -> float | None:
    """CPUs from a cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``)."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs from cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (-1: none)."""
    try:
        quota, period = int(quota_text or ""), int(period_text or "")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and its v1 ``cpu`` controller path, from ``/proc``."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _upwards(base: Path, relative: str | None) -> list[Path]:
    """``base/relative`` and each parent up to ``base``, those that exist.

    Inside a container's cgroup namespace the process sees its own cgroup as
    ``/``; without one, its path may not exist under a mount of only its own
    cgroup, and ``base`` alone is what is left.
    """
    start = base / (relative or "").lstrip("/")
    return [d for d in (start, *start.parents) if (d == base or base in d.parents) and d.is_dir()]


def _quota(root: Path, proc_cgroup: Path) -> float | None:
    v2_path, v1_path = _own_paths(proc_cgroup)
    found: list[float] = []
    if (root / "cgroup.controllers").exists():
        for d in _upwards(root, v2_path):
            q = _v2_quota(_read(d / "cpu.max"))
            if q is not None:
                found.append(q)
    else:
        for mount in _V1_CPU_MOUNTS:
            base = root / mount
            if not base.is_dir():
                continue
            for d in _upwards(base, v1_path):
                q = _v1_quota(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
                if q is not None:
                    found.append(q)
            break
    return min(found) if found else None


def cpu_budget(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CpuBudget:
    """This process's CPUs: host count, affinity, and the tightest cgroup quota."""
    return CpuBudget(
        host=os.cpu_count() or 1, affinity=_affinity(), quota=_quota(root, proc_cgroup)
    )


@functools.cache
def process_cpus() -> CpuBudget:
    """This process's :func:`cpu_budget`, read once: the one figure thread pools are sized by."""
    return cpu_budget()


def usable_cpus() -> int:
    """:attr:`CpuBudget.usable` of this process."""
    return process_cpus().usable
