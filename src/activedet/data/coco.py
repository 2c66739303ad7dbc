"""COCO instances JSON: import into a dataset, export a dataset's ground truth.

Import is forgiving where real exports are messy and strict where guessing would corrupt data
(:mod:`activedet.data.checks` has the checks every import shares):

* extra fields (CVAT ``attributes``, ``segmentation``, ``area`` ...) are ignored, except a track id
  (``attributes.track_id`` or a top-level ``track_id``), kept in the boxes' ``track_id`` column;
* every ``file_name`` must resolve inside the images root; every image header is read (parallel
  threads): missing files, and unusable ones (0-byte, not an image, unreadable, truncated), are
  errors listing the count and the first few names (or, with ``skip_missing_files`` /
  ``skip_bad_images``, those images and their boxes are dropped and counted);
* a ``width``/``height`` that differs from the file's is an error (images resized after
  labelling), or with ``rescale_boxes`` the boxes are scaled to the file's size (counted);
* crowd boxes (``iscrowd`` 1 or true) are kept with ``iscrowd = true`` (``crowd="flag"``) or
  dropped (``crowd="skip"``); any other ``iscrowd`` value is an error;
* zero-area boxes (``w`` or ``h`` = 0) are dropped and counted, negative ``w``/``h`` are errors;
  boxes partly outside their image are clipped and counted; ``bbox`` ``[x, y, w, h]`` becomes
  ``x1, y1, x2, y2``;
* ids, sizes and ``frame_index`` must be integers that fit int32, ``sequence_id`` a string.

Everything is validated before the output is opened, so bad input writes nothing. Image ``uri``s
point at the original files (absolute local path or ``s3://`` URI): nothing is copied.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.data.checks import (
    DEFAULT_WORKERS,
    DatasetImportError,
    ImageProbe,
    as_bbox,
    as_flag,
    as_int,
    first_offenders,
    probe_images,
    read_json,
    resolve_file,
)
from activedet.data.dataset import load_dataset, write_dataset_tables

log = logging.getLogger(__name__)

CROWD_MODES = ("flag", "skip")


# --------------------------------------------------------------------------- helpers


def image_root_uri(images: str) -> str:
    """Canonical form of an images root: an ``s3://`` URI or an absolute local path."""
    if store.is_s3(images):
        return str(images).rstrip("/")
    path = store.local_path(images)
    if not path.is_dir():
        raise DatasetImportError(f"images directory not found: {images}")
    return str(path.resolve())


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
    if images.num_rows == 0:
        raise DatasetImportError(f"no images to import into {out_uri}: a dataset needs at least one image")
    images_v = schema.validate_images(images, where="imported images")
    categories_v = schema.validate_categories(categories, where="imported categories")
    _, report = schema.validate_boxes(boxes, images=images_v, categories=categories_v, where="imported boxes")
    with store.OutputWriter(out_uri) as out:
        write_dataset_tables(out, images_v, boxes, categories_v, meta)
    summary = {**meta, "num_images": images_v.num_rows, "num_boxes": report.rows, "clipped_boxes": report.clipped, "uri": str(out_uri)}
    log.info("imported %d images, %d boxes into %s", images_v.num_rows, report.rows, out_uri)
    return summary


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Entry:
    """One validated COCO image entry."""

    key: str  # str(COCO image id): what annotations refer to
    image_id: str  # our image_id: the original id of an activedet export, else the COCO id
    name: str  # file_name as written in the JSON
    uri: str
    size: tuple[int, int] | None  # (width, height) from the JSON, when given
    sequence_id: str | None
    frame_index: int | None


def _image_entries(coco_images: list, where: str, root: str, also_root: str | None) -> list[_Entry]:
    out: list[_Entry] = []
    seen: set[str] = set()
    for k, img in enumerate(coco_images):
        if not isinstance(img, dict):
            raise DatasetImportError(f"{where}: images[{k}] must be an object, got {type(img).__name__}")
        cid = img.get("id")
        if isinstance(cid, bool) or not isinstance(cid, (int, str)) or cid == "":
            raise DatasetImportError(f"{where}: images[{k}]: 'id' must be an integer or a string, got {cid!r}")
        at = f"{where}: image id {cid!r}"
        if str(cid) in seen:
            raise DatasetImportError(f"{at}: duplicate image id")
        seen.add(str(cid))
        name = img.get("file_name")
        uri = resolve_file(root, name, at, also_root=also_root)
        w, h = img.get("width"), img.get("height")
        if w == 0 or h == 0:  # not "unknown": a size that cannot be compared with the file's hides resized images
            raise DatasetImportError(f"{at}: width and height must be > 0, got {w!r}x{h!r} (omit both to take the file's size)")
        size = None if w is None and h is None else (as_int(w, f"{at}: width", lo=1), as_int(h, f"{at}: height", lo=1))
        seq, frame, ours = img.get("sequence_id"), img.get("frame_index"), img.get("activedet_image_id")
        if seq is not None and not isinstance(seq, str):
            raise DatasetImportError(f"{at}: sequence_id must be a string, got {seq!r}")
        if frame is not None:
            frame = as_int(frame, f"{at}: frame_index")
        if ours is not None and (not isinstance(ours, str) or not ours):
            raise DatasetImportError(f"{at}: activedet_image_id must be a non-empty string, got {ours!r}")
        out.append(_Entry(str(cid), ours or str(cid), name, uri, size, seq, frame))
    return out


def _categories(coco_cats: list, where: str) -> tuple[list[int], list[str]]:
    ids, names = [], []
    for k, cat in enumerate(coco_cats):
        if not isinstance(cat, dict):
            raise DatasetImportError(f"{where}: categories[{k}] must be an object, got {type(cat).__name__}")
        ids.append(as_int(cat.get("id"), f"{where}: categories[{k}] 'id'"))
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise DatasetImportError(f"{where}: categories[{k}] (id {ids[-1]}): 'name' must be a non-empty string, got {name!r}")
        names.append(name)
    return ids, names


@dataclass(frozen=True)
class _Ann:
    key: str
    xywh: tuple[float, float, float, float]
    category_id: int
    crowd: bool
    track_id: str | None


def _annotations(coco_anns: list, where: str, keys: set[str]) -> tuple[list[_Ann], int]:
    """Validated annotations (zero-area boxes dropped) and how many were dropped."""
    out, zero_area = [], 0
    for k, ann in enumerate(coco_anns):
        if not isinstance(ann, dict):
            raise DatasetImportError(f"{where}: annotations[{k}] must be an object, got {ann!r:.60}")
        raw = ann.get("image_id")
        at = f"{where}: annotation {ann.get('id', f'#{k}')!r} of image_id {raw!r}"
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or str(raw) not in keys:
            raise DatasetImportError(f"{at}: image_id is not the id of an image in 'images'")
        x, y, w, h = as_bbox(ann.get("bbox"), at)
        if w == 0 or h == 0:
            zero_area += 1
            continue
        cat = as_int(ann.get("category_id"), f"{at}: category_id")
        out.append(_Ann(str(raw), (x, y, w, h), cat, as_flag(ann.get("iscrowd"), f"{at}: iscrowd"), _track_id(ann)))
    return out, zero_area


def _check_probes(entries: list[_Entry], probes: list[ImageProbe], where: str, root: str, *, skip_missing_files: bool,
                  skip_bad_images: bool, rescale_boxes: bool) -> tuple[list[int], dict[str, tuple[float, float]], dict]:
    """Indexes of the usable images, per-image box scale factors and counts; raises on what is not allowed."""
    missing = [e.name for e, p in zip(entries, probes, strict=True) if p.missing]
    if missing and not skip_missing_files:
        raise _missing_error(where, missing, len(entries), root)
    bad = [(e.name, p.problem) for e, p in zip(entries, probes, strict=True) if p.problem and not p.missing]
    if bad and not skip_bad_images:
        raise DatasetImportError(
            f"{len(bad)} of {len(entries)} image file(s) listed in {where} cannot be used: first "
            f"{first_offenders(bad)} (use --skip-bad-images to drop them)"
        )
    keep = [i for i, p in enumerate(probes) if p.problem is None]
    off = [(entries[i], probes[i].size) for i in keep if entries[i].size not in (None, probes[i].size)]
    if off and not rescale_boxes:
        first = ", ".join(f"{e.name!r} (JSON {e.size[0]}x{e.size[1]}, file {s[0]}x{s[1]})" for e, s in off[:3])
        swapped = sum(e.size == (s[1], s[0]) for e, s in off)
        note = (f"; {swapped} of them have width and height swapped (EXIF orientation? scaling would distort "
                "those boxes)") if swapped else ""
        raise DatasetImportError(
            f"{len(off)} of {len(entries)} image(s) in {where} have a width/height that differs from the image file "
            f"(resized after labelling?): first {first}{note} (use --rescale-boxes to scale their boxes to the files' sizes)"
        )
    scale = {e.key: (s[0] / e.size[0], s[1] / e.size[1]) for e, s in off}
    if missing:
        log.warning("skipped %d missing image file(s), first %s", len(missing), missing[:3])
    if bad:
        log.warning("skipped %d unusable image file(s): %s", len(bad), first_offenders(bad))
    if scale:
        log.warning("rescaled the boxes of %d image(s) whose files differ in size from the JSON", len(scale))
    return keep, scale, {"missing_files_skipped": len(missing), "bad_images_skipped": len(bad), "rescaled_images": len(scale)}


def import_coco(
    annotations: str,
    *,
    images: str,
    out_uri: str,
    split: str = "train",
    crowd: str = "flag",
    skip_missing_files: bool = False,
    skip_bad_images: bool = False,
    rescale_boxes: bool = False,
    workers: int = DEFAULT_WORKERS,
) -> dict:
    """Import a COCO instances JSON whose ``file_name``s are relative to ``images``.

    Every entry is validated and every image header probed (``workers`` threads, see
    :mod:`activedet.data.checks`) before anything is written. Image ids become
    ``str(coco image id)``. ``skip_missing_files`` / ``skip_bad_images`` drop missing / unusable
    image files and their boxes (counted) instead of failing; ``rescale_boxes`` scales the boxes
    of images whose file size differs from the JSON's ``width``/``height``. Returns a summary
    with counts (images, boxes, dropped zero-area / crowd boxes, skipped files, clipped boxes).
    """
    if crowd not in CROWD_MODES:
        raise DatasetImportError(f"crowd must be one of {list(CROWD_MODES)}, got {crowd!r}")
    if split not in schema.SPLITS:
        raise DatasetImportError(f"split must be one of {list(schema.SPLITS)}, got {split!r}")
    data = read_json(annotations)
    coco_images = _require_list(data, "images", annotations)
    coco_anns = _require_list(data, "annotations", annotations)
    coco_cats = _require_list(data, "categories", annotations)
    if not coco_images:
        raise DatasetImportError(f"{annotations}: no images: 'images' is empty")
    root = image_root_uri(images)
    also_root = None if store.is_s3(root) else os.path.abspath(store.local_path(images))
    entries = _image_entries(coco_images, annotations, root, also_root)
    cat_ids, cat_names = _categories(coco_cats, annotations)
    anns, zero_area = _annotations(coco_anns, annotations, {e.key for e in entries})

    probes = probe_images(root, [e.uri for e in entries], workers=workers)
    keep, scale, skipped = _check_probes(entries, probes, annotations, root, skip_missing_files=skip_missing_files,
                                         skip_bad_images=skip_bad_images, rescale_boxes=rescale_boxes)
    if not keep:
        raise DatasetImportError(f"{annotations}: no images left to import after skipping {len(entries)} unusable file(s)")
    kept = [entries[i] for i in keep]
    images_t = images_table(
        [e.image_id for e in kept],
        [e.uri for e in kept],
        [probes[i].size[0] for i in keep],
        [probes[i].size[1] for i in keep],
        [split] * len(kept),
        sequence_ids=[e.sequence_id for e in kept],
        frame_indexes=[e.frame_index for e in kept],
    )

    our_id = {e.key: e.image_id for e in entries}
    kept_keys = {e.key for e in kept}
    counts: Counter = Counter()
    box_ids, xyxy, cats, crowd_flags, tracks = [], [], [], [], []
    for ann in anns:
        if ann.key not in kept_keys:
            counts["boxes_of_skipped_files"] += 1
            continue
        if ann.crowd and crowd == "skip":
            counts["crowd_skipped"] += 1
            continue
        counts["crowd_flagged"] += ann.crowd
        sx, sy = scale.get(ann.key, (1.0, 1.0))
        x, y, w, h = ann.xywh
        box_ids.append(our_id[ann.key])
        xyxy.append((x * sx, y * sy, (x + w) * sx, (y + h) * sy))
        cats.append(ann.category_id)
        crowd_flags.append(ann.crowd)
        tracks.append(ann.track_id)

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
        **skipped,
        "zero_area_dropped": zero_area,
        "crowd_skipped": counts["crowd_skipped"],
        "crowd_flagged": counts["crowd_flagged"],
        "boxes_of_skipped_files": counts["boxes_of_skipped_files"],
    }
    return commit_dataset(out_uri, images_t, boxes, categories_table(cat_ids, cat_names), meta)


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
