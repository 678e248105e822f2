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


def test_a_layer_shows_clients_no_storage_details() -> None:
    layer = Layer(
        "attention", "attention", "temporal", [3, 4, 4], "float32",
        dates=[], days=[1.0], storage="cog", file="attention.tif", band=None, mask="p",
    )  # fmt: skip
    assert layer.public() == {
        "name": "attention", "role": "attention", "kind": "temporal",
        "shape": [3, 4, 4], "dtype": "float32", "dates": [],
    }  # fmt: skip
