"""Settings: read from ATTNSERVE_* variables (nested with __), unsafe values refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings

KEY = "a-key-of-twenty-characters"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The settings a test sets are the only ones there are.
    for name in [n for n in os.environ if n.startswith("ATTNSERVE_")]:
        monkeypatch.delenv(name)


def test_variables_with_the_prefix_and_nested_fields_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATTNSERVE_MAX_UPLOAD_MB", "12.5")
    monkeypatch.setenv("ATTNSERVE_BATCHING__MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("ATTNSERVE_WARMUP_BATCH_SIZES", "[8, 1, 8]")
    settings = Settings()
    assert settings.max_upload_mb == 12.5
    assert settings.batching.max_batch_size == 4
    assert settings.warmup_batch_sizes == [1, 8]  # sorted, once each


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"providers": []}, "at least one execution provider"),
        ({"providers": ["TPUExecutionProvider"]}, "unknown providers"),
        ({"providers": ["CPUExecutionProvider"] * 2}, "must not repeat"),
        ({"warmup_batch_sizes": [0]}, "from 1 to 65536"),
        ({"require_cuda": True, "providers": ["CPUExecutionProvider"]}, "require_cuda is set"),
        ({"api_keys": ["short"]}, "at least 16 characters"),
        ({"max_upload_mb": 0}, "greater than 0"),
        ({"model_name": "../footprints"}, "alphanumeric with - or _"),
    ],
)
def test_unsafe_or_contradictory_values_fail_at_start(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)  # type: ignore[arg-type]


def test_a_cuda_graph_needs_a_full_batch_warmed_up() -> None:
    with pytest.raises(ValidationError, match=r"cuda\.cuda_graph needs a warm-up batch size"):
        Settings(
            cuda={"cuda_graph": True},  # type: ignore[arg-type]
            batching={"max_batch_size": 8},  # type: ignore[arg-type]
            warmup_batch_sizes=[1, 4],
        )


def test_keys_come_from_settings_and_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# operators\n\n{KEY}-file\n")
    settings = Settings(api_keys=[KEY], api_keys_file=keys)  # type: ignore[list-item]
    assert settings.all_api_keys() == [KEY, f"{KEY}-file"]
    with pytest.raises(ValidationError, match="api_keys_file cannot be read"):
        Settings(api_keys_file=tmp_path / "missing")


@pytest.mark.parametrize(
    ("given", "kept"),
    [("s3://bucket/jobs/", "s3://bucket/jobs"), ("/srv/jobs", "/srv/jobs"), ("", None)],
)
def test_the_job_store_is_an_s3_url_or_a_directory(given: str, kept: str | None) -> None:
    assert Settings(job_store=given).job_store == kept


@pytest.mark.parametrize("bad", ["gs://bucket/jobs", "s3:///jobs", "http://host/jobs"])
def test_other_job_store_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="s3://bucket"):
        Settings(job_store=bad)
