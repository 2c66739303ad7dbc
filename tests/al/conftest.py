"""Fixtures for active-learning tests."""

from __future__ import annotations

import pytest
from al_helpers import make_dataset


@pytest.fixture
def al_dataset(tmp_path) -> str:
    """A tables-only dataset: 3 train sequences x 6 frames + 1 val sequence."""
    return make_dataset(str(tmp_path / "ds"))
