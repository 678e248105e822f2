"""Eviction: TTL expiry, the byte cap and the free-space floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.jobs.eviction import Room, expired, free_bytes


def test_only_finished_jobs_past_their_ttl_expire() -> None:
    assert expired(10.0, "done", now=10.0)
    assert expired(10.0, "failed", now=11.0)
    assert not expired(10.0, "done", now=9.0)
    assert not expired(10.0, "running", now=99.0)
    assert not expired(10.0, "queued", now=99.0)


def test_free_bytes_reads_the_volume(tmp_path: Path) -> None:
    assert free_bytes(tmp_path) > 0


def test_without_limits_nothing_is_evicted(tmp_path: Path) -> None:
    room = Room(tmp_path)
    room.track("a", 10**12)
    assert not room.enabled
    assert room.make_room(10**15, lambda _: True, lambda _: True) == 0


def test_the_byte_cap_evicts_oldest_first_and_skips_the_unevictable(tmp_path: Path) -> None:
    calls: list[int] = []
    room = Room(tmp_path, max_bytes=300, on_evict=calls.append)
    for job_id in "abcd":
        room.track(job_id, 100)
    deleted: list[str] = []

    def delete(job_id: str) -> bool:
        deleted.append(job_id)
        room.untrack(job_id)
        return True

    # 400 tracked + 100 new against a 300 cap: two must go; "a" is running.
    assert room.make_room(100, lambda job_id: job_id != "a", delete) == 2
    assert deleted == ["b", "c"]
    assert room.tracked_bytes == 200
    assert room.evicted == 2
    assert calls == [2]


def test_tracking_again_moves_a_job_to_the_newest(tmp_path: Path) -> None:
    room = Room(tmp_path, max_bytes=150)
    room.track("old", 100)
    room.track("new", 50)
    room.track("old", 60)  # a finished scene's outputs, counted again
    deleted: list[str] = []

    def delete(job_id: str) -> bool:
        deleted.append(job_id)
        room.untrack(job_id)
        return True

    room.make_room(50, lambda _: True, delete)
    assert deleted == ["new"]


def test_the_free_space_floor_asks_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Room(tmp_path, min_free_bytes=1000)
    monkeypatch.setattr("service.jobs.eviction.free_bytes", lambda _: 1500)
    assert not room.short_of(400)
    assert room.short_of(600)
