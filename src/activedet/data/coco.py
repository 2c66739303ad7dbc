"""COCO instances JSON: import into a dataset, export a dataset's ground truth.

Import is forgiving where real exports are messy and strict where guessing would corrupt data:

* extra fields (CVAT ``attributes``, ``segmentation``, ``area`` ...) are ignored, except a track id
  (``attributes.track_id`` or a top-level ``track_id``), kept in the boxes' ``track_id`` column;
* ``file_name``s that do not exist are an error listing the count and the first few names (or,
  with ``skip_missing_files``, those images and their boxes are dropped and counted);
* crowd boxes (``iscrowd: 1``) are kept with ``iscrowd = true`` (``crowd="flag"``) or dropped
  (``crowd="skip"``);
* zero-area boxes are dropped and counted; boxes partly outside their image are clipped and
  counted; ``bbox`` ``[x, y, w, h]`` becomes ``x1, y1, x2, y2``.

Everything is validated before the output is opened, so bad input writes nothing. Image ``uri``s
point at the original files (absolute local path or ``s3://`` URI): nothing is copied.
"""

from __future__ import annotations

import logging
import math
import posixpath
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.data.dataset import load_dataset, write_dataset_tables
from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

CROWD_MODES = ("flag", "skip")


class DatasetImportError(ActivedetError):
    """An annotation file or its images cannot be imported as they are."""


# --------------------------------------------------------------------------- helpers


def image_root_uri(images: str) -> str:
    """Canonical form of an images root: an ``s3://`` URI or an absolute local path."""
    if store.is_s3(images):
        return str(images).rstrip("/")
    path = store.local_path(images)
    if not path.is_dir():
        raise DatasetImportError(f"images directory not found: {images}")
    return str(path.resolve())


def existing_files(root: str, names: list[str]) -> list[bool]:
    """Whether each relative ``name`` exists under ``root`` (one listing for S3)."""
    if store.is_s3(root):
        present = set(store.list_uris(root))
        return [store.join(root, n) in present for n in names]
    return [(Path(root) / n).is_file() for n in names]


def _missing_error(what: str, missing: list[str], total: int, root: str) -> DatasetImportError:
    first = ", ".join(repr(m) for m in missing[:3])
    return DatasetImportError(
        f"{len(missing)} of {total} image file(s) listed in {what} not found under {root}: first {first}"
        " (use --skip-missing-files to drop them)"
    )


def _require_list(data: dict, key: str, where: str) -> list:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise DatasetImportError(f"{where}: not a COCO instances file: '{key}' must be a list")
    return value


def _track_id(ann: dict):
    attrs = ann.get("attributes")
    value = attrs.get("track_id") if isinstance(attrs, dict) else None
    if value is None:
        value = ann.get("track_id")
    return None if value is None else str(value)


def categories_table(ids, names) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.int32()), "name": pa.array(list(names), pa.string())})


def images_table(ids, uris, widths, heights, splits, sequence_ids=None, frame_indexes=None) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "image_id": pa.array(list(ids), pa.string()),
            "uri": pa.array(list(uris), pa.string()),
            "width": pa.array(list(widths), pa.int32()),
            "height": pa.array(list(heights), pa.int32()),
            "sequence_id": pa.array(sequence_ids if sequence_ids is not None else [None] * n, pa.string()),
            "frame_index": pa.array(frame_indexes if frame_indexes is not None else [None] * n, pa.int32()),
            "timestamp": pa.array([None] * n, pa.float64()),
            "split": pa.array(list(splits), pa.string()),
        },
        schema=schema.IMAGES,
    )


def commit_dataset(out_uri: str, images: pa.Table, boxes: pa.Table, categories: pa.Table, meta: dict) -> dict:
    """Validate everything first (so bad input writes nothing), then commit at ``out_uri``."""
    images_v = schema.validate_images(images, where="imported images")
    categories_v = schema.validate_categories(categories, where="imported categories")
    _, report = schema.validate_boxes(boxes, images=images_v, categories=categories_v, where="imported boxes")
    with store.OutputWriter(out_uri) as out:
        write_dataset_tables(out, images_v, boxes, categories_v, meta)
    summary = {**meta, "num_images": images_v.num_rows, "num_boxes": report.rows, "clipped_boxes": report.clipped, "uri": str(out_uri)}
    log.info("imported %d images, %d boxes into %s", images_v.num_rows, report.rows, out_uri)
    return summary


# --------------------------------------------------------------------------- import


def import_coco(
    annotations: str,
    *,
    images: str,
    out_uri: str,
    split: str = "train",
    crowd: str = "flag",
    skip_missing_files: bool = False,
) -> dict:
    """Import a COCO instances JSON whose ``file_name``s are relative to ``images``.

    Image ids become ``str(coco image id)``. Returns a summary with counts (images, boxes,
    dropped zero-area / crowd boxes, skipped missing files, clipped boxes).
    """
    if crowd not in CROWD_MODES:
        raise DatasetImportError(f"crowd must be one of {list(CROWD_MODES)}, got {crowd!r}")
    if split not in schema.SPLITS:
        raise DatasetImportError(f"split must be one of {list(schema.SPLITS)}, got {split!r}")
    data = store.read_json(annotations)
    coco_images = _require_list(data, "images", annotations)
    coco_anns = _require_list(data, "annotations", annotations)
    coco_cats = _require_list(data, "categories", annotations)
    root = image_root_uri(images)

    try:
        cat_ids = [int(c["id"]) for c in coco_cats]
        cat_names = [str(c["name"]) for c in coco_cats]
        img_ids = [img["id"] for img in coco_images]
        file_names = [str(img["file_name"]) for img in coco_images]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetImportError(f"{annotations}: malformed image or category entry ({type(exc).__name__}: {exc})") from None

    present = existing_files(root, file_names)
    missing = [n for n, ok in zip(file_names, present, strict=True) if not ok]
    if missing and not skip_missing_files:
        raise _missing_error(annotations, missing, len(file_names), root)
    keep = [i for i, ok in enumerate(present) if ok]
    dropped_ids = {str(img_ids[i]) for i, ok in enumerate(present) if not ok}

    widths, heights = [], []
    for i in keep:
        img = coco_images[i]
        w, h = img.get("width"), img.get("height")
        if not w or not h:
            w, h = image_size(store.join(root, file_names[i]))
        widths.append(int(w))
        heights.append(int(h))
    # our image_id: the original id of an activedet export, else the COCO id as a string
    our_id = {str(img_ids[i]): str(coco_images[i].get("activedet_image_id") or img_ids[i]) for i in range(len(img_ids))}
    ids = [our_id[str(img_ids[i])] for i in keep]
    images_t = images_table(
        ids,
        [store.join(root, file_names[i]) for i in keep],
        widths,
        heights,
        [split] * len(keep),
        sequence_ids=[coco_images[i].get("sequence_id") for i in keep],
        frame_indexes=[coco_images[i].get("frame_index") for i in keep],
    )

    counts: Counter = Counter()
    box_ids, xyxy, cats, crowd_flags, tracks = [], [], [], [], []
    for ann in coco_anns:
        if not isinstance(ann, dict):
            raise DatasetImportError(f"{annotations}: annotation entries must be objects")
        image_id = str(ann.get("image_id"))
        if image_id in dropped_ids:
            counts["boxes_of_missing_files"] += 1
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetImportError(
                f"{annotations}: annotation {ann.get('id')!r} of image_id {image_id!r}: bbox must be [x, y, w, h], got {bbox!r}"
            )
        x, y, w, h = (float(v) for v in bbox)
        if all(math.isfinite(v) for v in (x, y, w, h)) and (w <= 0 or h <= 0):
            counts["zero_area_dropped"] += 1
            continue
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and crowd == "skip":
            counts["crowd_skipped"] += 1
            continue
        counts["crowd_flagged"] += is_crowd
        try:
            cat = int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DatasetImportError(
                f"{annotations}: annotation {ann.get('id')!r} of image_id {image_id!r}: bad category_id {ann.get('category_id')!r}"
            ) from None
        box_ids.append(our_id.get(image_id, image_id))
        xyxy.append((x, y, x + w, y + h))
        cats.append(cat)
        crowd_flags.append(is_crowd)
        tracks.append(_track_id(ann))

    extra: dict = {"iscrowd": crowd_flags}
    if any(t is not None for t in tracks):
        extra["track_id"] = tracks
    boxes = schema.boxes_from_arrays(box_ids, np.array(xyxy, np.float64).reshape(-1, 4), cats, source="gt", extra=extra)
    meta = {
        "source": "coco",
        "annotations": str(annotations),
        "images_root": root,
        "split": split,
        "crowd": crowd,
        "missing_files_skipped": len(missing),
        "zero_area_dropped": counts["zero_area_dropped"],
        "crowd_skipped": counts["crowd_skipped"],
        "crowd_flagged": counts["crowd_flagged"],
        "boxes_of_missing_files": counts["boxes_of_missing_files"],
    }
    if missing:
        log.warning("skipped %d missing image file(s), first %s", len(missing), missing[:3])
    return commit_dataset(out_uri, images_t, boxes, categories_table(cat_ids, cat_names), meta)


def image_size(uri: str) -> tuple[int, int]:
    """(width, height) of an image from its header (PIL reads lazily; S3 objects are fetched)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if store.is_s3(uri):
            import io

            with Image.open(io.BytesIO(store.read_bytes(uri))) as im:
                return im.size
        with Image.open(store.local_path(uri)) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetImportError(f"cannot read image header of {uri}: {exc}") from None


# --------------------------------------------------------------------------- export


def _common_root(uris: list[str]) -> str:
    """Longest common directory of ``uris`` (works for paths and s3:// URIs alike)."""
    if not uris:
        return ""
    parts = [u.split("/")[:-1] for u in uris]
    common = parts[0]
    for p in parts[1:]:
        n = 0
        while n < min(len(common), len(p)) and common[n] == p[n]:
            n += 1
        common = common[:n]
    return "/".join(common)


def export_coco(dataset_uri: str, out: str, *, split: str | None = None) -> dict:
    """Write a dataset's images and ground-truth boxes as a COCO instances JSON at ``out``.

    ``file_name``s are relative to the images' common directory, recorded as
    ``info.images_root`` (pass it as ``--images`` to re-import). Numeric image ids are kept;
    otherwise images are numbered from 1 and the original id goes to ``activedet_image_id``.
    """
    ds = load_dataset(dataset_uri)
    images = ds.images.to_pylist()
    if split is not None:
        if split not in schema.SPLITS:
            raise DatasetImportError(f"split must be one of {list(schema.SPLITS)}, got {split!r}")
        images = [r for r in images if r["split"] == split]
    uris = [ds.resolve_uri(r["uri"]) for r in images]
    root = _common_root(uris)
    numeric = all(r["image_id"].isdigit() for r in images)
    coco_id = {r["image_id"]: (int(r["image_id"]) if numeric else k + 1) for k, r in enumerate(images)}
    coco_images = []
    for r, uri in zip(images, uris, strict=True):
        entry = {"id": coco_id[r["image_id"]], "file_name": posixpath.relpath(uri, root) if root else uri,
                 "width": r["width"], "height": r["height"]}
        if not numeric:
            entry["activedet_image_id"] = r["image_id"]
        if r["sequence_id"] is not None:
            entry["sequence_id"], entry["frame_index"] = r["sequence_id"], r["frame_index"]
        coco_images.append(entry)

    boxes = ds.boxes.to_pydict()
    has_crowd, has_track = "iscrowd" in boxes, "track_id" in boxes
    annotations = []
    for i, image_id in enumerate(boxes["image_id"]):
        if image_id not in coco_id or boxes["source"][i] != "gt":
            continue
        x1, y1, x2, y2 = (float(boxes[c][i]) for c in schema.BOX_COORDS)
        ann = {
            "id": len(annotations) + 1,
            "image_id": coco_id[image_id],
            "category_id": int(boxes["category_id"][i]),
            # float32 coordinates printed as float64 show noise digits; 1/1000 px is plenty
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "area": round((x2 - x1) * (y2 - y1), 3),
            "iscrowd": int(bool(boxes["iscrowd"][i])) if has_crowd and boxes["iscrowd"][i] is not None else 0,
        }
        if has_track and boxes["track_id"][i] is not None:
            ann["attributes"] = {"track_id": boxes["track_id"][i]}
        annotations.append(ann)
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(ds.category_ids, ds.class_names, strict=True)]
    payload = {
        "info": {"description": f"exported by activedet from {dataset_uri}", "images_root": root, "split": split},
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }
    store.write_json(out, payload)
    log.info("exported %d images, %d boxes to %s", len(coco_images), len(annotations), out)
    return {"out": str(out), "num_images": len(coco_images), "num_boxes": len(annotations), "images_root": root}
