"""Fixtures for the bad-input suite (shared ones come from tests/conftest.py and tests/data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_COCO128_CANDIDATES = (
    Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "coco128",
    Path("/work/shared/datasets/coco128"),
)


@pytest.fixture(scope="session")
def coco128() -> Path:
    """The real COCO128 files (COCO JSON + images, and YOLO data.yaml + labels)."""
    env = os.environ.get("ACTIVEDET_COCO128")
    candidates = [Path(env)] if env else list(_COCO128_CANDIDATES)
    root = next((c for c in candidates if (c / "instances_train2017.json").is_file()), candidates[0])
    if not (root / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found at {root} (set ACTIVEDET_COCO128)")
    return root


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
