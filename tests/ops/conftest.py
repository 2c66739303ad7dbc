"""Fixtures for the production-operations tests."""

from __future__ import annotations

import pytest

from activedet import store


@pytest.fixture(params=["local", "s3"])
def ops_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ops")
    return store.join(request.getfixturevalue("s3_bucket"), "ops")
