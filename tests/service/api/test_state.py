"""The handlers' shared state: built from the settings, nothing loaded until the lifespan."""

from __future__ import annotations

from pathlib import Path

from service.api.state import AppState
from service.app import build_state
from service.config import Settings
from service.metrics import Metrics


def test_the_state_follows_the_settings_and_loads_nothing(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(
        model_dir=model_dir,
        job_dir=tmp_path / "jobs",
        memory_budget_mb=512,
        request_memory_mb=128,
        footprints_max_features=50,
        warmup=False,
    )
    state = build_state(settings, Metrics())
    assert state.settings is settings
    assert not state.draining
    assert state.budget.total == 512 * 2**20
    assert state.budget.per_request == 128 * 2**20
    # Footprints are made from this state's own job store, within its limits.
    assert state.footprints.store is state.store
    assert state.footprints.limits.max_features == 50
    assert state.repository.names() == []  # the lifespan loads the models


def test_a_state_built_by_hand_gets_default_footprints_on_its_store(
    model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(model_dir=model_dir, job_dir=tmp_path / "jobs", warmup=False)
    built = build_state(settings, Metrics())
    state = AppState(
        settings, built.metrics, built.repository, built.store, built.jobs, built.intake
    )
    assert state.footprints.store is built.store
    assert state.budget.total >= 2**62  # unlimited unless the lifespan's budget is given
    assert state.notes == {}
