"""Fixtures for dataset import/export tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# ../shared next to the checkout; CI may clone elsewhere, so also the workspace's shared folder.
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
def small_coco(coco128, tmp_path):
    """Factory: write a COCO JSON with the first ``n`` train images of coco128, edited by ``edit``.

    Returns the JSON path; its file_names resolve against ``coco128 / "images"``.
    """

    def make(n: int = 4, edit=None, name: str = "ann.json") -> Path:
        data = json.loads((coco128 / "instances_train2017.json").read_text())
        images = data["images"][:n]
        ids = {im["id"] for im in images}
        data["images"] = images
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        if edit is not None:
            edit(data)
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return path

    return make
