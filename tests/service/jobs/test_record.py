"""Job records, job ids and owner tags."""

from __future__ import annotations

import dataclasses
import json

import pytest

from service.errors import NotFound
from service.jobs.record import (
    FINAL_STATES,
    JobRecord,
    Layer,
    ModelGrid,
    ResamplingSummary,
    Series,
    Tiling,
    id_age_s,
    is_job_id,
    new_id,
    owner_of,
)


def _record(**fields: object) -> JobRecord:
    model = {"name": "m", "version": "1", "task": "segmentation"}
    return JobRecord(id=new_id(), model=model, kind="raster", created=1.0, expires=2.0, **fields)  # type: ignore[arg-type]


def test_new_ids_are_ids_and_carry_their_time() -> None:
    job_id = new_id()
    assert is_job_id(job_id)
    age = id_age_s(job_id)
    assert age is not None
    assert -1 < age < 1
    assert not is_job_id("../" + job_id[3:])
    assert id_age_s("short") is None


def test_owner_tags_hash_the_key_and_keep_none() -> None:
    tag = owner_of("secret-key")
    assert tag is not None
    assert len(tag) == 32
    assert tag == owner_of("secret-key") != owner_of("other-key")
    assert owner_of(None) is None


@pytest.mark.parametrize("state", ["queued", "running", "done", "failed", "cancelled"])
def test_finished_means_a_final_state(state: str) -> None:
    assert _record(state=state).finished == (state in FINAL_STATES)


def test_layers_are_found_by_name_or_named_in_the_error() -> None:
    record = _record(
        layers=[
            Layer("p", "prediction", "probability", [1], "float32"),
            Layer("a", "x", "y", [1], "float32"),
        ]
    )
    assert record.layer("a").role == "x"
    assert record.layer_names() == ["p", "a"]
    with pytest.raises(NotFound, match="layers: p, a"):
        record.layer("nope")


def test_a_record_round_trips_through_json() -> None:
    layer = Layer("p", "prediction", "class", [2, 2], "uint8", nodata=255, classes=["a", "b"])
    record = _record(layers=[layer], packed={"p": 0}, state="running")
    again = JobRecord(**json.loads(json.dumps(dataclasses.asdict(record))))
    assert again == record


def test_typed_parts_round_trip_through_json() -> None:
    record = _record(
        series=Series(["2024-03-02"], [61.0], ["wheat", "maize"], ids=["field-7"]),
        tiling=Tiling(tile_size=256, overlap=32, tiles=9),
        resampling=ResamplingSummary(
            applied=True, model_gsd_m=0.5, input_gsd_m=[0.25, 0.25], factor=[0.5, 0.5],
            model_grid=ModelGrid(width=48, height=48), method="average", method_back="bilinear",
        ),
        runs=2, resumed=1, eta_s=3.5, seconds=12.25,
    )  # fmt: skip
    text = json.dumps(dataclasses.asdict(record))
    assert '"extra"' not in text
    again = JobRecord(**json.loads(text))
    assert again == record
    assert again.resampling is not None
    assert again.resampling.model_grid == ModelGrid(48, 48)


def test_a_resampling_summary_leaves_out_what_was_not_decided() -> None:
    kept = ResamplingSummary(applied=False, model_gsd_m=0.5, reason="not georeferenced: run as is")
    assert kept.to_json() == {
        "applied": False, "model_gsd_m": 0.5, "input_gsd_m": None, "tolerance": 1.25,
        "reason": "not georeferenced: run as is",
    }  # fmt: skip
    done = ResamplingSummary(
        True, 0.5, [1.0, 1.0], 1.25, None, [2.0, 2.0], ModelGrid(8, 6), "bilinear", "bilinear"
    )
    assert done.to_json()["model_grid"] == {"width": 8, "height": 6}
    assert "reason" not in done.to_json()


def test_a_record_stored_with_one_extra_dict_loads_into_the_typed_fields() -> None:
    stored = dataclasses.asdict(_record(state="done"))
    stored["extra"] = {
        "dates": ["2024-03-02", "2024-03-19"], "days": [61, 78], "classes": ["a", "b"],
        "ids": ["p1"], "tiling": {"tile_size": 512, "overlap": 64, "tiles": 4},
        "resampling": {"applied": True, "model_gsd_m": 0.5, "input_gsd_m": [1.0, 1.0],
                       "tolerance": 1.25, "factor": [2.0, 2.0],
                       "model_grid": {"width": 64, "height": 64},
                       "method": "bilinear", "method_back": "bilinear"},
        "runs": 1, "resumed": 2, "eta_s": 0.0, "seconds": 4.5,
    }  # fmt: skip
    record = JobRecord(**json.loads(json.dumps(stored)))
    assert record.series == Series(["2024-03-02", "2024-03-19"], [61.0, 78.0], ["a", "b"], ["p1"])
    assert record.tiling == Tiling(512, 64, 4)
    assert record.resampling is not None
    assert record.resampling.to_json() == stored["extra"]["resampling"]
    assert (record.runs, record.resumed, record.eta_s, record.seconds) == (1, 2, 0.0, 4.5)
    # Written again, it has the typed fields only.
    assert "extra" not in dataclasses.asdict(record)
    # A segmentation job of then: no series, nothing else made up.
    plain = JobRecord(**{**dataclasses.asdict(_record()), "extra": {}})
    assert plain.series is None
    assert plain.tiling is None
    assert plain.runs == 0


def test_a_layer_shows_clients_no_storage_details() -> None:
    layer = Layer(
        "attention", "attention", "temporal", [3, 4, 4], "float32",
        dates=[], days=[1.0], storage="cog", file="attention.tif", band=None, mask="p",
    )  # fmt: skip
    assert layer.public() == {
        "name": "attention", "role": "attention", "kind": "temporal",
        "shape": [3, 4, 4], "dtype": "float32", "dates": [],
    }  # fmt: skip
