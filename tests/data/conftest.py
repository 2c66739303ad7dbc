"""Fixtures for dataset import/export tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


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
