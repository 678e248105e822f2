"""Browser tests of the viewer: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``browser`` marker (``-m 'not browser'`` leaves these tests out)."""
    config.addinivalue_line("markers", "browser: needs Playwright and Chromium")
