"""Labeling handoff: export a selected batch for annotators, import their COCO JSON back.

Export (:func:`export_batch`) writes, under an output prefix (committed atomically):

* ``batch.coco.json`` -- COCO with the batch's ``images`` (``id`` = rank + 1, ``file_name`` = the
  dataset's image ``uri``, ``width``, ``height``, ``activedet_image_id``), the dataset's
  ``categories`` and no annotations;
* ``manifest.jsonl`` -- one line per image for a labeling tool: ``source-ref`` (absolute URI),
  ``image_id``, ``file_name``, ``width``, ``height``;
* ``export.json`` -- what was exported from where.

Import (:func:`import_labels`) validates the returned COCO JSON against the selection and writes
``boxes.parquet`` (ground-truth boxes, source ``gt``: the previous labels, if given, with every
imported image's boxes *replaced*, so importing the same file twice never duplicates labels),
``labels.json`` and a new ledger in which the imported images are ``labeled``.

Images are matched by ``activedet_image_id`` when present, else by ``file_name`` (the exported
one, or a unique basename of it: tools often strip directories); categories by ``name`` (tools
renumber ids), else by ``id``. Every violation raises :class:`LabelImportError` (CLI exit 2).
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.al import ledger as ledger_mod
from activedet.data.checks import as_bbox, as_flag, read_json
from activedet.data.dataset import load_dataset
from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

COCO_FILE = "batch.coco.json"
MANIFEST_FILE = "manifest.jsonl"
EXPORT_META = "export.json"
LABELS_FILE = "boxes.parquet"
LABELS_META = "labels.json"


class LabelImportError(ActivedetError):
    """Returned labels do not match the exported batch."""


@dataclass(frozen=True)
class ExportResult:
    output_uri: str
    coco_uri: str
    manifest_uri: str
    images: int


@dataclass(frozen=True)
class ImportResult:
    output_uri: str
    labels_uri: str
    ledger_uri: str
    images: int
    boxes: int
    replaced_images: int


def _selection_ids(selection_uri: str) -> list[str]:
    from activedet.al.selection import read_selection

    return read_selection(selection_uri).column("image_id").to_pylist()


def export_batch(dataset_uri: str, selection_uri: str, output_uri: str) -> ExportResult:
    """Write the selection's images as COCO JSON (no annotations) plus a manifest of image URIs."""
    dataset = load_dataset(dataset_uri)
    ids = _selection_ids(selection_uri)
    rows = {iid: k for k, iid in enumerate(dataset.images.column("image_id").to_pylist())}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ActivedetError(f"labels export: {len(missing)} selected image(s) not in dataset {dataset_uri}, e.g. {missing[0]!r}")
    img = dataset.images.to_pydict()
    images, manifest = [], []
    for rank, iid in enumerate(ids):
        k = rows[iid]
        entry = {"id": rank + 1, "file_name": img["uri"][k], "width": int(img["width"][k]),
                 "height": int(img["height"][k]), "activedet_image_id": iid}
        images.append(entry)
        manifest.append({"source-ref": dataset.resolve_uri(img["uri"][k]), "image_id": iid, "file_name": img["uri"][k],
                         "width": entry["width"], "height": entry["height"]})
    categories = [{"id": int(c), "name": n} for c, n in zip(dataset.category_ids, dataset.class_names, strict=True)]
    coco = {"info": {"description": "activedet batch", "selection_uri": selection_uri},
            "images": images, "annotations": [], "categories": categories}
    with store.OutputWriter(output_uri) as out:
        coco_uri = out.write_json(COCO_FILE, coco)
        manifest_uri = out.write_bytes(MANIFEST_FILE, "".join(json.dumps(m) + "\n" for m in manifest).encode())
        out.write_json(EXPORT_META, {"dataset_uri": dataset_uri, "selection_uri": selection_uri, "images": len(ids)})
    log.info("labels export: %d image(s) to %s", len(ids), output_uri)
    return ExportResult(output_uri=output_uri, coco_uri=coco_uri, manifest_uri=manifest_uri, images=len(ids))


def _load_coco(coco_uri: str) -> dict:
    try:
        coco = read_json(coco_uri, error=LabelImportError)
    except LabelImportError as exc:
        raise LabelImportError(f"labels import: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise LabelImportError(f"labels import: {coco_uri}: not COCO JSON (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(coco.get(key, []), list):
            raise LabelImportError(f"labels import: {coco_uri}: '{key}' must be a list")
    for key in ("images", "annotations", "categories"):
        for k, entry in enumerate(coco.get(key, [])):
            if not isinstance(entry, dict):
                raise LabelImportError(f"labels import: {coco_uri}: {key}[{k}] must be an object, got {entry!r:.60}")
    return coco


def _id(value, where: str):
    """A COCO id: an integer or a non-empty string (never a bool, list or object)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise LabelImportError(f"labels import: {where} must be an integer or a string, got {value!r}")
    return value


def _optional_str(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise LabelImportError(f"labels import: {where}: '{key}' must be a string, got {value!r}")
    return value


def _map_images(coco: dict, dataset, selected: list[str], where: str) -> dict[int, str]:
    """COCO image id -> activedet image_id, rejecting images outside the selection."""
    uri_of = dict(zip(dataset.images.column("image_id").to_pylist(), dataset.images.column("uri").to_pylist(), strict=True))
    by_name = {uri_of[i]: i for i in selected if i in uri_of}
    by_base: dict[str, list[str]] = {}
    for i in selected:
        by_base.setdefault(posixpath.basename(uri_of.get(i, "")), []).append(i)
    chosen = set(selected)
    out: dict[int, str] = {}
    unknown: list[str] = []
    for k, im in enumerate(coco["images"]):
        if "id" not in im:
            raise LabelImportError(f"labels import: {where}: images[{k}] has no 'id'")
        coco_id = _id(im["id"], f"{where}: images[{k}] 'id'")
        iid = _optional_str(im, "activedet_image_id", f"{where}: image {coco_id!r}")
        if iid is None:
            name = _optional_str(im, "file_name", f"{where}: image {coco_id!r}") or ""
            iid = by_name.get(name)
            if iid is None and len(by_base.get(posixpath.basename(name), [])) == 1:
                iid = by_base[posixpath.basename(name)][0]
        if iid is None or iid not in chosen:
            unknown.append(str(im.get("activedet_image_id") or im.get("file_name")))
            continue
        if coco_id in out:
            raise LabelImportError(f"labels import: {where}: duplicate COCO image id {coco_id!r}")
        out[coco_id] = iid
    if unknown:
        raise LabelImportError(f"labels import: {where}: {len(unknown)} image(s) not in the selection, e.g. {unknown[0]!r}")
    dup = len(out) - len(set(out.values()))
    if dup:
        raise LabelImportError(f"labels import: {where}: {dup} selected image(s) listed more than once")
    return out


def _map_categories(coco: dict, dataset, where: str) -> dict[int, int]:
    """COCO category id -> dataset category id (by name, else by id)."""
    names = dict(zip(dataset.class_names, dataset.category_ids, strict=True))
    ids = set(dataset.category_ids)
    out: dict[int, int] = {}
    for k, cat in enumerate(coco.get("categories", [])):
        if "id" not in cat:
            raise LabelImportError(f"labels import: {where}: categories[{k}] ({cat.get('name')!r}) has no 'id'")
        cat_id = _id(cat["id"], f"{where}: categories[{k}] 'id'")
        name = _optional_str(cat, "name", f"{where}: category {cat_id!r}")
        if name is not None and name in names:
            out[cat_id] = names[name]
        elif name is None and cat_id in ids:
            out[cat_id] = cat_id
        else:
            raise LabelImportError(f"labels import: {where}: unknown category {name or cat.get('id')!r}; known: {sorted(names)}")
    return out


def read_coco_boxes(coco_uri: str, dataset_uri: str, selection_uri: str, *, allow_partial: bool = False) -> tuple[pa.Table, list[str]]:
    """Validate a returned COCO file against a selection; returns (gt boxes, imported image ids)."""
    dataset = load_dataset(dataset_uri)
    selected = _selection_ids(selection_uri)
    coco = _load_coco(coco_uri)
    img_map = _map_images(coco, dataset, selected, coco_uri)
    missing = [i for i in selected if i not in set(img_map.values())]
    if missing and not allow_partial:
        raise LabelImportError(f"labels import: {coco_uri}: {len(missing)} selected image(s) missing, e.g. {missing[0]!r}")
    cat_map = _map_categories(coco, dataset, coco_uri)
    image_ids, xyxy, cats, crowd = [], [], [], []
    for k, ann in enumerate(coco.get("annotations", [])):
        at = f"{coco_uri}: annotation {ann.get('id', f'#{k}')!r}"
        image_id = _id(ann.get("image_id"), f"{at}: image_id")
        if image_id not in img_map:
            raise LabelImportError(f"labels import: {at} refers to unknown image {image_id!r}")
        category_id = _id(ann.get("category_id"), f"{at}: category_id")
        if category_id not in cat_map:
            raise LabelImportError(f"labels import: {at} has unknown category {category_id!r}")
        x, y, w, h = as_bbox(ann.get("bbox"), f"labels import: {at}", error=LabelImportError)
        image_ids.append(img_map[image_id])
        xyxy.append((x, y, x + w, y + h))
        cats.append(cat_map[category_id])
        crowd.append(as_flag(ann.get("iscrowd"), f"labels import: {at}: iscrowd", error=LabelImportError))
    boxes = schema.boxes_from_arrays(image_ids, np.asarray(xyxy, np.float32).reshape(-1, 4), cats, source="gt",
                                     extra={"iscrowd": crowd})
    try:
        boxes, _ = schema.validate_boxes(boxes, images=dataset.images, categories=dataset.categories, where=coco_uri)
    except ActivedetError as exc:
        raise LabelImportError(f"labels import: {exc}") from None
    return boxes, sorted(set(img_map.values()))


def import_labels(
    coco_uri: str,
    *,
    selection_uri: str,
    dataset_uri: str,
    ledger_uri: str,
    output_uri: str,
    previous_labels_uri: str | None = None,
    allow_partial: bool = False,
) -> ImportResult:
    """Merge returned COCO labels: new labels table (previous + these, replaced per image) and ledger.

    Images of the file must be in the selection and ``pending`` (or already ``labeled``: a
    re-import replaces their boxes). Missing selected images are an error unless ``allow_partial``
    (then they stay pending).
    """
    boxes, imported = read_coco_boxes(coco_uri, dataset_uri, selection_uri, allow_partial=allow_partial)
    ledger, meta = ledger_mod.read_ledger(ledger_uri)
    try:
        new_ledger = ledger_mod.set_state(ledger, imported, "labeled", allowed_from=("pending", "labeled"))
    except ActivedetError as exc:
        raise LabelImportError(f"labels import: {exc}") from None
    replaced = 0
    if previous_labels_uri:
        prev, _ = schema.validate_boxes(store.read_output_table(previous_labels_uri, LABELS_FILE),
                                        where=store.join(previous_labels_uri, LABELS_FILE))
        prev_ids = prev.column("image_id").to_pylist()
        again = set(imported)
        replaced = len(again.intersection(prev_ids))
        keep = np.array([i not in again for i in prev_ids], bool)
        prev = prev.filter(pa.array(keep))
        if "iscrowd" not in prev.column_names:
            prev = prev.append_column("iscrowd", pa.array([False] * prev.num_rows, pa.bool_()))
        boxes = pa.concat_tables([prev.select(boxes.column_names).cast(boxes.schema), boxes])
    with store.OutputWriter(output_uri) as out:
        labels_uri = out.write_table(LABELS_FILE, boxes)
        out.write_json(LABELS_META, {"coco_uri": coco_uri, "selection_uri": selection_uri, "images": len(imported),
                                     "boxes": boxes.num_rows, "replaced_images": replaced, "previous_labels_uri": previous_labels_uri})
        ledger_mod.write_ledger(out, new_ledger, cycle=ledger_mod.ledger_cycle(ledger, meta), parent=ledger_uri,
                                imported_from=coco_uri)
    log.info("labels import: %d image(s), %d box(es) in total (%d re-imported)", len(imported), boxes.num_rows, replaced)
    return ImportResult(output_uri=output_uri, labels_uri=labels_uri, ledger_uri=output_uri, images=len(imported),
                        boxes=boxes.num_rows, replaced_images=replaced)


def result_dict(result: ExportResult | ImportResult) -> dict:
    return asdict(result)
