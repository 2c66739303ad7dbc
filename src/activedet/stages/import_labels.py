"""Merge annotations returned by human labelers into the dataset and the ledger.

Continuous mode: each cycle exports a batch for labeling (:func:`activedet.labels.export_batch`);
annotators return a COCO JSON days later. This stage imports every returned file given in
``returns`` (in order) with :func:`activedet.labels.import_labels`, which validates it against
the exported selection, replaces (never appends) the boxes of re-imported images and moves them
from ``pending`` to ``labeled``. It then writes a new dataset version whose ground-truth boxes
include the imported labels, and the resulting ledger. Importing the same file twice leaves the
same boxes. With no returns, dataset and ledger are carried over unchanged.
"""

from __future__ import annotations

import logging

import pyarrow as pa
from pydantic import Field

from activedet import labels, schema, store
from activedet.al.ledger import ledger_cycle, read_ledger, write_ledger
from activedet.config import FrozenModel, StageConfig
from activedet.data.dataset import load_dataset, write_dataset_tables

log = logging.getLogger(__name__)

NAME = "import-labels"
IMAGE = "cpu"


class LabelReturn(FrozenModel):
    coco_uri: str = Field(description="returned COCO JSON from the labeling tool")
    selection_uri: str = Field(description="select-batch output the returned batch was exported from")


class Config(StageConfig):
    dataset_uri: str = Field(description="current dataset (committed)")
    ledger_uri: str = Field(description="current ledger (selected images are pending)")
    returns: list[LabelReturn] = Field(default_factory=list, description="returned label files, oldest first")
    labels_uri: str | None = Field(None, description="previous labels output (boxes.parquet) to merge with")
    output_uri: str = Field(description="output prefix: imports/NN/ (labels + ledger per returned file)")
    out_dataset_uri: str = Field(description="where to write the dataset with the imported boxes")
    out_ledger_uri: str = Field(description="where to write the resulting ledger")
    allow_partial: bool = Field(True, description="accept returns that label only part of the batch (the rest stays pending)")


def _merge_boxes(dataset_boxes: pa.Table, label_boxes: pa.Table) -> pa.Table:
    """Dataset boxes with every labeled image's boxes replaced by the imported ones."""
    labeled = set(label_boxes.column("image_id").to_pylist())
    keep = pa.array([i not in labeled for i in dataset_boxes.column("image_id").to_pylist()], pa.bool_())
    cols = schema.BOXES.names
    return pa.concat_tables([
        dataset_boxes.filter(keep).select(cols).cast(schema.BOXES),
        label_boxes.select(cols).cast(schema.BOXES),
    ])


def run(config: Config) -> dict:
    ledger_uri, labels_uri = config.ledger_uri, config.labels_uri
    results = []
    for k, ret in enumerate(config.returns):
        res = labels.import_labels(
            ret.coco_uri, selection_uri=ret.selection_uri, dataset_uri=config.dataset_uri, ledger_uri=ledger_uri,
            output_uri=store.join(config.output_uri, "imports", f"{k:02d}"), previous_labels_uri=labels_uri,
            allow_partial=config.allow_partial,
        )
        ledger_uri, labels_uri = res.ledger_uri, res.output_uri
        results.append(labels.result_dict(res))
    ds = load_dataset(config.dataset_uri)
    boxes = ds.boxes
    if labels_uri:
        label_boxes = store.read_output_table(labels_uri, labels.LABELS_FILE)
        boxes = _merge_boxes(ds.boxes, label_boxes)
    images = ds.images.set_column(
        ds.images.schema.get_field_index("uri"), "uri",
        pa.array([ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()], pa.string()),
    )
    with store.OutputWriter(config.out_dataset_uri, meta={"stage": "import-labels"}) as out:
        write_dataset_tables(out, images, boxes, ds.categories, {**ds.meta, "parent": config.dataset_uri})
    ledger, meta = read_ledger(ledger_uri)
    with store.OutputWriter(config.out_ledger_uri, meta={"stage": "import-labels"}) as out:
        meta = write_ledger(out, ledger, cycle=ledger_cycle(ledger, meta), parent=ledger_uri)
    log.info("import-labels: %d return(s), ledger %s", len(config.returns), meta["counts"])
    return {
        "imported_files": [r.coco_uri for r in config.returns],
        "imports": results,
        "labels_uri": labels_uri,
        "dataset_uri": config.out_dataset_uri,
        "ledger_uri": config.out_ledger_uri,
        "num_boxes": boxes.num_rows,
        "counts": meta["counts"],
    }
