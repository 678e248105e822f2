"""What every command shares: a failure is one line on stderr and an exit code."""

from __future__ import annotations

import pytest

from service.cli.base import fail


def test_a_failure_is_one_prefixed_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail("quantize: no images", 2) == 2
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "attnserve: quantize: no images\n")
