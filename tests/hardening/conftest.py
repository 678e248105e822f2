"""The server's live-test fixtures, shared with the hardening tests."""

from __future__ import annotations

from tests.service.conftest import model_dir, shared_data, start_server

__all__ = ["model_dir", "shared_data", "start_server"]
