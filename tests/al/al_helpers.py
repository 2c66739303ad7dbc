"""Helpers for active-learning tests: a tables-only dataset and crafted predictions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.data.dataset import write_dataset_tables
from activedet.models.types import Detections, ImagePrediction

CATEGORIES = {1: "car", 2: "person", 3: "truck"}


def make_dataset(uri: str, *, sequences: int = 3, frames: int = 6, val_sequences: int = 1) -> str:
    """A small dataset (tables only, no pixels): ``s{seq}_f{frame}`` ids, one GT box per image."""
    ids, seqs, frs, splits = [], [], [], []
    for s in range(sequences + val_sequences):
        for f in range(frames):
            ids.append(f"s{s}_f{f:02d}")
            seqs.append(f"s{s}")
            frs.append(f)
            splits.append("train" if s < sequences else "val")
    images = pa.table(
        {
            "image_id": ids,
            "uri": [f"images/{i}.png" for i in ids],
            "width": pa.array([64] * len(ids), pa.int32()),
            "height": pa.array([32] * len(ids), pa.int32()),
            "sequence_id": seqs,
            "frame_index": pa.array(frs, pa.int32()),
            "timestamp": pa.array([float(f) for f in frs]),
            "split": splits,
        }
    )
    boxes = schema.boxes_from_arrays(ids, np.tile([[2, 2, 20, 20]], (len(ids), 1)), [1 + k % 3 for k in range(len(ids))], source="gt")
    cats = pa.table({"id": pa.array(list(CATEGORIES), pa.int32()), "name": list(CATEGORIES.values())})
    with store.OutputWriter(uri) as out:
        write_dataset_tables(out, images, boxes, cats, {"name": "al-test"})
    return uri


def dets(boxes, probs, scores=None, labels=None) -> Detections:
    """Detections from box rows and class distributions (C + 1 entries, 0 = background)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    probs = np.asarray(probs, np.float32)
    probs = probs.reshape(len(boxes), -1) if probs.size else probs.reshape(0, 4)
    if labels is None:
        labels = probs[:, 1:].argmax(axis=1) + 1 if len(boxes) else np.zeros(0, np.int64)
    if scores is None:
        scores = probs[:, 1:].max(axis=1) if len(boxes) else np.zeros(0, np.float32)
    return Detections(boxes=boxes, labels=np.asarray(labels, np.int64), scores=np.asarray(scores, np.float32), class_probs=probs)


def prediction(image_id: str, boxes, probs, *, flipped=None, mc_probs=None, embedding=None, scores=None) -> ImagePrediction:
    return ImagePrediction(image_id=image_id, width=64, height=32, detections=dets(boxes, probs, scores), flipped=flipped,
                           mc_probs=None if mc_probs is None else np.asarray(mc_probs, np.float32),
                           embedding=None if embedding is None else np.asarray(embedding, np.float32))
