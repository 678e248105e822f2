"""Schemathesis against a live server: no 500s, and every answer is one the spec documents.

Each operation of ``/openapi.json`` gets a bounded number of generated requests
(valid and invalid by the schema). A response fails when it is a server error,
or its status, content type or body is not what the spec says for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers.server import LiveServer

EXAMPLES_PER_OPERATION = 15
BUDGET_S = 40.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_generated_requests_get_documented_answers_and_no_server_error(
    start_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = start_server(request_timeout_s="5")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    examples = 0
    operations = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                nonlocal examples
                if time.monotonic() - started > BUDGET_S:
                    return
                examples += 1
                try:
                    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)
                except (AssertionError, FailureGroup) as exc:
                    failures.append(f"{case.operation.label}: {str(exc)[:600]}")

            try:
                call()
            except Unsatisfiable:
                continue  # no parameters to make invalid (e.g. GET /healthz)
    took = time.monotonic() - started
    print(f"schemathesis: {operations} operations, {examples} examples, {len(failures)} failures")
    print(f"schemathesis: {took:.1f} s")
    assert operations >= 9
    assert not failures, "\n\n".join(failures[:10])
    assert "Traceback" not in server.log_path.read_text()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s"])
