"""A dataset in the artifact store.

Layout under a dataset URI (a committed output, see :class:`activedet.store.OutputWriter`)::

    images.parquet       images table (schema.IMAGES); ``uri`` may be relative to the dataset URI
    boxes.parquet        ground-truth boxes (schema.BOXES, source = gt)
    categories.parquet   categories (schema.CATEGORIES)
    dataset.json         free-form metadata (generator settings, import source, counts)
    images/...           image files, when the dataset carries its own (SynthDrive does)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from activedet import schema, store
from activedet.errors import IncompleteOutputError


@dataclass(frozen=True)
class Dataset:
    """Images, ground-truth boxes and categories of one dataset (validated tables)."""

    images: pa.Table
    boxes: pa.Table
    categories: pa.Table
    meta: dict = field(default_factory=dict)
    uri: str | None = None

    @property
    def category_ids(self) -> list[int]:
        """Category ids in ascending order: index k here is class_probs index k + 1."""
        return sorted(self.categories.column("id").to_pylist())

    @property
    def class_names(self) -> list[str]:
        by_id = dict(zip(self.categories.column("id").to_pylist(), self.categories.column("name").to_pylist(), strict=True))
        return [by_id[i] for i in self.category_ids]

    def resolve_uri(self, image_uri: str) -> str:
        """Absolute URI of an image: relative ``uri`` values are relative to the dataset URI."""
        if "://" in image_uri or image_uri.startswith("/") or self.uri is None:
            return image_uri
        return store.join(self.uri, image_uri)

    def split_ids(self, split: str) -> list[str]:
        mask = self.images.column("split").to_pylist()
        return [i for i, s in zip(self.images.column("image_id").to_pylist(), mask, strict=True) if s == split]


def load_dataset(uri: str) -> Dataset:
    """Load and validate a committed dataset."""
    try:
        store.require_committed(uri)
    except IncompleteOutputError as exc:
        raise IncompleteOutputError(f"dataset: {exc}") from None
    images = schema.validate_images(store.read_table(store.join(uri, "images.parquet")), where=store.join(uri, "images.parquet"))
    categories = schema.validate_categories(
        store.read_table(store.join(uri, "categories.parquet")), where=store.join(uri, "categories.parquet")
    )
    boxes, _ = schema.validate_boxes(
        store.read_table(store.join(uri, "boxes.parquet")),
        images=images,
        categories=categories,
        where=store.join(uri, "boxes.parquet"),
    )
    meta_uri = store.join(uri, "dataset.json")
    meta = store.read_json(meta_uri) if store.exists(meta_uri) else {}
    return Dataset(images=images, boxes=boxes, categories=categories, meta=meta, uri=str(uri).rstrip("/"))


def write_dataset_tables(out: store.OutputWriter, images: pa.Table, boxes: pa.Table, categories: pa.Table, meta: dict) -> schema.ValidationReport:
    """Validate and write the three tables + metadata into an open output writer."""
    images = schema.validate_images(images, where=out.uri("images.parquet"))
    categories = schema.validate_categories(categories, where=out.uri("categories.parquet"))
    boxes, report = schema.validate_boxes(boxes, images=images, categories=categories, where=out.uri("boxes.parquet"))
    out.write_table("images.parquet", images)
    out.write_table("boxes.parquet", boxes)
    out.write_table("categories.parquet", categories)
    out.write_json("dataset.json", {**meta, "num_images": images.num_rows, "num_boxes": boxes.num_rows, "clipped_boxes": report.clipped})
    return report
