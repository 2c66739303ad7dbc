"""Fixtures for the artifact-store tests: the same tests run on a local dir and on moto's S3."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """A fresh store root: a local directory, or a bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket")
