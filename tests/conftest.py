"""Shared fixtures."""

import pytest


@pytest.fixture
def procs():
    """Processes a test starts (mbt.driver.Process/Console); all stopped at the end."""
    started = []
    yield started
    for p in reversed(started):
        p.stop(5)
