"""Merge several datasets (e.g. one import per annotation file) into one.

Categories are matched by name: the same name must carry the same id everywhere, and one id
must not name two classes (either conflict is an error naming both datasets). Image ids must be
unique across the inputs; ``prefix_ids`` prefixes each input's ids with its position
(``0/``, ``1/`` ...) when independent exports reuse ids. Image URIs become absolute, splits and
sequence ids are kept, so a train export and a val export merge into one dataset with both splits.
"""

from __future__ import annotations

import pyarrow as pa

from activedet import schema, store
from activedet.data.dataset import Dataset, load_dataset, write_dataset_tables
from activedet.errors import ActivedetError


class MergeError(ActivedetError):
    """Datasets cannot be merged as they are."""


def merged_categories(datasets: list[Dataset]) -> pa.Table:
    """One categories table; same name -> same id, conflicts are errors."""
    by_name: dict[str, tuple[int, str]] = {}
    by_id: dict[int, tuple[str, str]] = {}
    for ds in datasets:
        for cid, name in zip(ds.category_ids, ds.class_names, strict=True):
            if name in by_name and by_name[name][0] != cid:
                raise MergeError(
                    f"category {name!r} has id {by_name[name][0]} in {by_name[name][1]} but {cid} in {ds.uri}"
                )
            if cid in by_id and by_id[cid][0] != name:
                raise MergeError(f"category id {cid} is {by_id[cid][0]!r} in {by_id[cid][1]} but {name!r} in {ds.uri}")
            by_name.setdefault(name, (cid, str(ds.uri)))
            by_id.setdefault(cid, (name, str(ds.uri)))
    ids = sorted(by_id)
    return pa.table({"id": pa.array(ids, pa.int32()), "name": pa.array([by_id[i][0] for i in ids], pa.string())})


def _with_ids(table: pa.Table, prefix: str) -> pa.Table:
    if not prefix:
        return table
    ids = pa.array([f"{prefix}{i}" for i in table.column("image_id").to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("image_id"), "image_id", ids)


def merge_datasets(uris: list[str], out_uri: str, *, prefix_ids: bool = False) -> dict:
    """Commit one dataset at ``out_uri`` holding the images, boxes and categories of ``uris``.

    Returns:
        a summary: inputs, images and boxes per input and in all, split counts, uri.
    """
    if len(uris) < 2:
        raise MergeError("merge needs at least two datasets")
    datasets = [load_dataset(u) for u in uris]
    categories = merged_categories(datasets)
    images, boxes, seen = [], [], {}
    for k, ds in enumerate(datasets):
        prefix = f"{k}/" if prefix_ids else ""
        absolute = pa.array([ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()], pa.string())
        table = _with_ids(ds.images.set_column(ds.images.schema.get_field_index("uri"), "uri", absolute), prefix)
        for image_id in table.column("image_id").to_pylist():
            if image_id in seen:
                raise MergeError(
                    f"image id {image_id!r} is in both {seen[image_id]} and {ds.uri} (use --prefix-ids for independent exports)"
                )
            seen[image_id] = ds.uri
        images.append(table)
        boxes.append(_with_ids(ds.boxes, prefix))
    all_images = pa.concat_tables(images)
    all_boxes = pa.concat_tables(boxes, promote_options="default")
    meta = {"source": "merge", "inputs": [str(u) for u in uris], "prefix_ids": prefix_ids}
    with store.OutputWriter(out_uri) as out:
        write_dataset_tables(out, all_images, all_boxes, categories, meta)
    splits = {s: n for s, n in zip(*_counts(all_images), strict=True)}
    return {**meta, "uri": str(out_uri), "num_images": all_images.num_rows, "num_boxes": all_boxes.num_rows,
            "splits": splits, "per_input": [{"uri": str(d.uri), "images": d.images.num_rows, "boxes": d.boxes.num_rows}
                                            for d in datasets]}


def _counts(images: pa.Table) -> tuple[list[str], list[int]]:
    values = images.column("split").to_pylist()
    present = [s for s in schema.SPLITS if s in values]
    return present, [values.count(s) for s in present]
