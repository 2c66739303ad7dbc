"""YOLO datasets (``data.yaml`` + ``labels/``): import into a dataset.

Follows the Ultralytics layout: ``data.yaml`` has ``path`` (the root; relative to the yaml's
folder), ``train`` / ``val`` / ``test`` (each a folder of images, a ``.txt`` list of image paths,
or a list of those, relative to the root) and ``names`` (a list or an ``{index: name}`` mapping).
The label file of ``.../images/.../x.jpg`` is ``.../labels/.../x.txt``, one ``cls cx cy w h``
line per box (normalised to [0, 1]); lines with more values are polygons, boxed by their extent.

Category id = YOLO index + ``id_offset`` (default 1, so COCO-derived YOLO data gets COCO-style
ids starting at 1). Image sizes come from the image headers (no decoding). Image ids are the
file stems when these are unique, else the paths relative to the root without extension.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from activedet import schema
from activedet.data.checks import (
    DEFAULT_WORKERS,
    DatasetImportError,
    first_offenders,
    probe_images,
    read_text,
)
from activedet.data.coco import categories_table, commit_dataset, images_table

log = logging.getLogger(__name__)

NORM_SLACK = 0.01  # normalised coordinates a little outside [0, 1] are clipped; far outside is a unit mistake
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DatasetImportError(f"YOLO data file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise DatasetImportError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DatasetImportError(f"{path}: expected a mapping with 'names' and 'train'/'val' keys")
    return data


def _names(data: dict, where: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetImportError(f"{where}: 'names' keys must be class indices") from None
        if keys != list(range(len(keys))):
            raise DatasetImportError(f"{where}: 'names' indices must be 0..{len(keys) - 1} without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    raise DatasetImportError(f"{where}: 'names' must be a list or an index -> name mapping")


def _split_images(root: Path, entry, where: Path, split: str) -> list[Path]:
    """Image files of one split entry (folder, .txt list, or a list of those)."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[Path] = []
    for item in entries:
        path = Path(str(item))
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix == ".txt":
            for line in read_text(path).splitlines():
                line = line.strip()
                if line:
                    p = Path(line)
                    out.append(p if p.is_absolute() else (path.parent / p if line.startswith(".") else root / p))
        else:
            raise DatasetImportError(f"{where}: '{split}' entry {item!r} not found (looked for {path})")
    missing = [p for p in out if not p.is_file()]
    if missing:
        first = ", ".join(repr(str(m)) for m in missing[:3])
        raise DatasetImportError(f"{len(missing)} of {len(out)} image file(s) listed for '{split}' in {where} not found: first {first}")
    return out


def label_path(image: Path) -> Path:
    """YOLO convention: the last ``images`` folder in the path becomes ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _parse_labels(path: Path, n_classes: int) -> list[tuple[int, float, float, float, float]]:
    """(class index, x1, y1, x2, y2) in normalised coordinates."""
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DatasetImportError(f"{path}:{lineno}: expected 'class cx cy w h', got {line.strip()!r}") from None
        if not 0 <= cls < n_classes:
            raise DatasetImportError(f"{path}:{lineno}: class index {cls} not in names (0..{n_classes - 1})")
        if not all(math.isfinite(v) for v in values):
            raise DatasetImportError(f"{path}:{lineno}: non-finite coordinate in {line.strip()!r}")
        if len(values) == 4 and (values[2] < 0 or values[3] < 0):
            raise DatasetImportError(f"{path}:{lineno}: negative box width or height in {line.strip()!r}")
        if any(not -NORM_SLACK <= v <= 1 + NORM_SLACK for v in values):
            raise DatasetImportError(f"{path}:{lineno}: coordinates must be normalised to [0, 1] (pixels?), got {line.strip()!r}")
        if len(values) == 4:
            cx, cy, w, h = values
            rows.append((cls, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        elif len(values) >= 6 and len(values) % 2 == 0:  # polygon: box its extent
            xs, ys = values[0::2], values[1::2]
            rows.append((cls, min(xs), min(ys), max(xs), max(ys)))
        else:
            raise DatasetImportError(f"{path}:{lineno}: expected 4 box values or a polygon, got {len(values)} values")
    return rows


def import_yolo(data_yaml: str, *, out_uri: str, id_offset: int = 1, skip_bad_images: bool = False,
                workers: int = DEFAULT_WORKERS) -> dict:
    """Import a YOLO dataset described by ``data_yaml``; returns a summary with counts.

    Every image header is read (``workers`` threads): unusable files (0-byte, not an image,
    unreadable, truncated) are an error, or with ``skip_bad_images`` dropped and counted.
    """
    where = Path(data_yaml)
    data = _read_yaml(where)
    names = _names(data, where)
    root = Path(str(data.get("path") or "."))
    root = (root if root.is_absolute() else where.parent / root).resolve()
    splits = [s for s in schema.SPLITS if data.get(s)]
    if not splits:
        raise DatasetImportError(f"{where}: no 'train', 'val' or 'test' entry")

    files: list[tuple[Path, str]] = []
    for split in splits:
        files += [(p.resolve(), split) for p in _split_images(root, data[split], where, split)]
    stems = [p.stem for p, _ in files]
    unique_stems = len(set(stems)) == len(stems)

    def image_id(p: Path) -> str:
        if unique_stems:
            return p.stem
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        return rel.with_suffix("").as_posix().lstrip("/")

    if not files:
        raise DatasetImportError(f"{where}: no images in the 'train'/'val'/'test' entries")
    probes = probe_images(str(root), [str(p) for p, _ in files], workers=workers)
    bad = [(str(p), pr.problem) for (p, _), pr in zip(files, probes, strict=True) if pr.problem]
    if bad and not skip_bad_images:
        raise DatasetImportError(f"{len(bad)} of {len(files)} image file(s) of {where} cannot be used: first "
                                 f"{first_offenders(bad)} (use --skip-bad-images to drop them)")
    if bad:
        log.warning("skipped %d unusable image file(s): %s", len(bad), first_offenders(bad))
    if len(bad) == len(files):
        raise DatasetImportError(f"{where}: no images left to import after skipping {len(bad)} unusable file(s)")

    counts: Counter = Counter()
    ids, uris, widths, heights, split_col = [], [], [], [], []
    box_ids, xyxy, cats = [], [], []
    for (path, split), probe in zip(files, probes, strict=True):
        if probe.problem:
            continue
        w, h = probe.size
        iid = image_id(path)
        ids.append(iid)
        uris.append(str(path))
        widths.append(w)
        heights.append(h)
        split_col.append(split)
        lp = label_path(path)
        if not lp.is_file():
            counts["images_without_label_file"] += 1
            continue
        for cls, x1, y1, x2, y2 in _parse_labels(lp, len(names)):
            if x2 <= x1 or y2 <= y1:
                counts["zero_area_dropped"] += 1
                continue
            box_ids.append(iid)
            xyxy.append((x1 * w, y1 * h, x2 * w, y2 * h))
            cats.append(cls + id_offset)

    images_t = images_table(ids, uris, widths, heights, split_col)
    boxes = schema.boxes_from_arrays(box_ids, np.array(xyxy, np.float64).reshape(-1, 4), cats, source="gt")
    meta = {
        "source": "yolo",
        "data_yaml": str(where.resolve()),
        "root": str(root),
        "id_offset": id_offset,
        "images_per_split": dict(Counter(split_col)),
        "zero_area_dropped": counts["zero_area_dropped"],
        "images_without_label_file": counts["images_without_label_file"],
        "bad_images_skipped": len(bad),
    }
    categories = categories_table([k + id_offset for k in range(len(names))], names)
    return commit_dataset(out_uri, images_t, boxes, categories, meta)
