"""CPU budget: affinity capped by cgroup quotas, and the session options sized by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.app import session_options
from service.config import Settings
from service.runtime import cpus
from service.runtime.cpus import CpuBudget, cpu_budget


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 64-core host whose scheduler lets this process run on 16 of them."""
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus, "_affinity", lambda: 16)


def _v2(root: Path, own: str, limits: dict[str, str]) -> Path:
    """A cgroup v2 tree with ``cpu.max`` per cgroup, and a /proc/self/cgroup for ``own``."""
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for path, value in limits.items():
        (root / path.lstrip("/") / "cpu.max").write_text(value + "\n")
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


@pytest.mark.usefixtures("host")
def test_v2_quota_of_a_container_in_its_own_namespace(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _v2(root, "/", {"/": "250000 100000"})
    budget = cpu_budget(root, proc)
    assert budget.quota == pytest.approx(2.5)
    # A fractional quota rounds down: a third thread would be throttled.
    assert budget.usable == 2
    assert budget.limited


@pytest.mark.usefixtures("host")
def test_v2_tightest_limit_on_the_way_up_wins(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _v2(
        root,
        "/kubepods/pod1/ctr",
        {"/kubepods": "max 100000", "/kubepods/pod1": "400000 100000", "/kubepods/pod1/ctr": "max"},
    )
    assert cpu_budget(root, proc).quota == pytest.approx(4.0)
    assert cpu_budget(root, proc).usable == 4


@pytest.mark.usefixtures("host")
def test_v2_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _v2(root, "/user.slice", {"/user.slice": "max 100000"})
    budget = cpu_budget(root, proc)
    assert budget.quota is None
    assert budget.usable == 16
    assert budget.limited  # the affinity mask already leaves fewer than the host's 64


@pytest.mark.usefixtures("host")
def test_quota_larger_than_the_affinity_does_not_raise_it(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _v2(root, "/", {"/": "3200000 100000"})
    assert cpu_budget(root, proc).usable == 16


@pytest.mark.usefixtures("host")
@pytest.mark.parametrize("garbage", ["", "lots 100000", "100000", "-5 100000", "100000 0"])
def test_v2_unreadable_values_are_no_quota(tmp_path: Path, garbage: str) -> None:
    root = tmp_path / "cg"
    proc = _v2(root, "/", {"/": garbage})
    assert cpu_budget(root, proc).quota is None


@pytest.mark.usefixtures("host")
def test_v2_own_path_missing_under_the_mount_falls_back_to_its_root(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    proc = _v2(root, "/", {"/": "200000 100000"})
    proc.write_text("0::/system.slice/docker-abc.scope\n")
    assert cpu_budget(root, proc).usable == 2


@pytest.mark.usefixtures("host")
@pytest.mark.parametrize(
    ("quota", "period", "expected"), [("150000", "100000", 1.5), ("-1", "100000", None)]
)
def test_v1_cfs_quota(tmp_path: Path, quota: str, period: str, expected: float | None) -> None:
    root = tmp_path / "cg"
    own = root / "cpu,cpuacct" / "docker" / "abc"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text(quota + "\n")
    (own / "cpu.cfs_period_us").write_text(period + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    budget = cpu_budget(root, proc)
    assert budget.quota == (pytest.approx(expected) if expected else None)
    assert budget.usable == (1 if expected else 16)


def test_no_cgroup_filesystem_is_no_quota(tmp_path: Path) -> None:
    budget = cpu_budget(tmp_path / "absent", tmp_path / "absent-proc")
    assert budget.quota is None
    assert budget.usable >= 1


def test_a_quota_sizes_onnx_runtime_threads_and_instances() -> None:
    settings = Settings()
    two = session_options(settings, CpuBudget(host=64, affinity=64, quota=2.0))
    assert (two.intra_op_threads, two.cpu_instances) == (2, 2)
    one = session_options(settings, CpuBudget(host=64, affinity=64, quota=1.0))
    assert (one.intra_op_threads, one.cpu_instances) == (1, 1)


def test_an_unlimited_host_keeps_onnx_runtime_default_and_settings_win() -> None:
    host = CpuBudget(host=8, affinity=8)
    options = session_options(Settings(), host)
    # ONNX Runtime's default counts physical cores, which is right on a bare host.
    assert (options.intra_op_threads, options.cpu_instances) == (0, 2)
    pinned = Settings(intra_op_threads=3, cpu_instances=1)
    options = session_options(pinned, CpuBudget(host=64, affinity=64, quota=2.0))
    assert (options.intra_op_threads, options.cpu_instances) == (3, 1)
