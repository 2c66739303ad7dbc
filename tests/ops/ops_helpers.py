"""Helpers for the production-operations tests: tiny datasets and image drops."""

from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from activedet import schema, store
from activedet.al.ledger import new_ledger, write_ledger
from activedet.data.dataset import write_dataset_tables


def png_bytes(width: int, height: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), ((seed * 37) % 256, (seed * 91) % 256, 128)).save(buf, format="PNG")
    return buf.getvalue()


def drop_images(prefix: str, names: list[str], *, width: int = 64, height: int = 32, seed0: int = 0) -> list[str]:
    """Write PNGs under ``prefix`` (distinct content per name); returns their URIs."""
    uris = []
    for i, name in enumerate(names):
        uri = store.join(prefix, name)
        store.write_bytes(uri, png_bytes(width, height, seed0 + i))
        uris.append(uri)
    return uris


def make_base(root: str) -> tuple[str, str]:
    """A committed two-image dataset (one labeled train image, one val) and its ledger."""
    uris = drop_images(store.join(root, "base/images"), ["a.png", "b.png"], seed0=200)
    images = pa.Table.from_pylist(
        [
            {"image_id": "a", "uri": uris[0], "width": 64, "height": 32, "sequence_id": "s0", "frame_index": 0, "timestamp": None, "split": "train"},
            {"image_id": "b", "uri": uris[1], "width": 64, "height": 32, "sequence_id": "s1", "frame_index": 0, "timestamp": None, "split": "val"},
        ],
        schema=schema.IMAGES,
    )
    boxes = pa.Table.from_pylist(
        [{"image_id": "a", "x1": 1.0, "y1": 1.0, "x2": 10.0, "y2": 10.0, "category_id": 1, "score": 1.0, "source": "gt"}],
        schema=schema.BOXES,
    )
    cats = pa.Table.from_pylist([{"id": 1, "name": "car"}], schema=schema.CATEGORIES)
    ds_uri, ledger_uri = store.join(root, "datasets/v0"), store.join(root, "ledgers/v0")
    with store.OutputWriter(ds_uri) as out:
        write_dataset_tables(out, images, boxes, cats, {"name": "base"})
    with store.OutputWriter(ledger_uri) as out:
        write_ledger(out, new_ledger(["a"], ["a"], 0), cycle=0, parent=None)
    return ds_uri, ledger_uri
