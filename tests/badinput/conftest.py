"""Fixtures for the bad-input suite (``coco128``, ``make_synth`` ... come from tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def user_images(coco128, tmp_path) -> Path:
    """A user's own images folder (copies of 4 coco128 photos): the data that must survive."""
    import shutil

    src = json.loads((coco128 / "instances_train2017.json").read_text())["images"][:4]
    root = tmp_path / "my-images"
    root.mkdir()
    for im in src:
        (root / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(coco128 / "images" / im["file_name"], root / im["file_name"])
    return root
