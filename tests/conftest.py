"""Shared fixtures."""

from __future__ import annotations

import pytest

from nexussched.traces import default_traces_dir


@pytest.fixture
def traces_dir():
    d = default_traces_dir()
    if d is None or not (d / "azure2023_conv.csv").exists():
        pytest.skip("../shared/traces not found")
    return d
