"""Register newly arrived images under a prefix into the dataset's images table and the ledger.

Continuous mode: drives land under ``source_uri`` (S3 or local) between scheduled runs. This
stage lists the prefix, skips what is already registered (same URI, or same content: equal
ETag/MD5 and size under another key), reads width/height from the image headers, takes
``sequence_id`` / ``frame_index`` / ``timestamp`` from the path via ``path_regex`` or from a
sidecar manifest (JSON or CSV), and writes a new dataset version (images appended; boxes and
categories carried over) and a new ledger version with the new images in the unlabeled pool.
Ingesting the same prefix twice adds nothing the second time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from pathlib import PurePosixPath

import pyarrow as pa
from pydantic import Field

from activedet import schema, store
from activedet.al.ledger import UNSELECTED_CYCLE, read_ledger, write_ledger
from activedet.config import StageConfig
from activedet.data.dataset import load_dataset, write_dataset_tables
from activedet.errors import ActivedetError, ConfigError
from activedet.progress import Progress

log = logging.getLogger(__name__)

NAME = "ingest"
IMAGE = "cpu"

INGEST_INDEX = "ingested.parquet"
INDEX_SCHEMA = pa.schema([("uri", pa.string()), ("etag", pa.string()), ("size", pa.int64()), ("image_id", pa.string())])
DEFAULT_REGEX = r"(?P<sequence_id>[^/]+)/[^/]*?(?P<frame_index>\d+)\.[A-Za-z]+$"


class Config(StageConfig):
    source_uri: str = Field(description="prefix where new images arrive (s3://bucket/drives/ or a local dir)")
    dataset_uri: str = Field(description="current dataset (committed; images/boxes/categories tables)")
    out_dataset_uri: str = Field(description="where to write the new dataset version")
    ledger_uri: str | None = Field(None, description="current ledger; new images are added to it as unlabeled")
    out_ledger_uri: str | None = Field(None, description="where to write the new ledger version (required with ledger_uri)")
    path_regex: str = Field(
        DEFAULT_REGEX,
        description="regex on the path relative to source_uri; named groups sequence_id, frame_index, timestamp",
    )
    manifest: str | None = Field(
        None,
        description="sidecar manifest (JSON list or CSV) relative to source_uri or absolute; columns: "
        "path (relative), sequence_id, frame_index, timestamp; overrides path_regex",
    )
    extensions: list[str] = Field([".png", ".jpg", ".jpeg"], description="image file extensions to register")
    id_prefix: str = Field("ingest/", description="prefix of new image_ids (image_id = prefix + relative path)")
    split: str = Field("train", description="split of new images (train: they join the unlabeled pool)")


def _rel(uri: str, base: str) -> str:
    return uri[len(base.rstrip("/")) + 1 :]


def _read_manifest(cfg: Config) -> dict[str, dict]:
    uri = cfg.manifest if ("://" in cfg.manifest or cfg.manifest.startswith("/")) else store.join(cfg.source_uri, cfg.manifest)
    text = store.read_text(uri)
    if uri.lower().endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        try:
            import json

            rows = json.loads(text)
        except ValueError as exc:
            raise ActivedetError(f"manifest {uri}: malformed JSON: {exc}") from None
        rows = rows.get("images", rows) if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or any(not isinstance(r, dict) or "path" not in r for r in rows):
        raise ActivedetError(f"manifest {uri}: expected a list of records with a 'path' field")
    out = {}
    for r in rows:
        out[str(r["path"]).lstrip("/")] = {
            "sequence_id": (str(r["sequence_id"]) if r.get("sequence_id") not in (None, "") else None),
            "frame_index": (int(r["frame_index"]) if r.get("frame_index") not in (None, "") else None),
            "timestamp": (float(r["timestamp"]) if r.get("timestamp") not in (None, "") else None),
        }
    return out


def _meta_from_path(rel: str, regex: re.Pattern) -> dict:
    m = regex.search(rel)
    groups = m.groupdict() if m else {}
    return {
        "sequence_id": groups.get("sequence_id"),
        "frame_index": int(groups["frame_index"]) if groups.get("frame_index") else None,
        "timestamp": float(groups["timestamp"]) if groups.get("timestamp") else None,
    }


def image_size(uri: str) -> tuple[int, int]:
    """(width, height) from the image header (reads the first 64 KiB, more only if needed)."""
    from PIL import Image, UnidentifiedImageError

    with store.open_read(uri) as fh:
        head = fh.read(1 << 16)
        for data in (head, None):
            if data is None:
                data = head + fh.read()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    return int(im.width), int(im.height)
            except (UnidentifiedImageError, OSError, SyntaxError):
                if len(head) < (1 << 16):
                    break
    raise ActivedetError(f"ingest: cannot read image header of {uri}")


def _content_tags(objects: list[dict]) -> list[dict]:
    """Local files get an MD5 ETag like S3's single-part ETag, so copies dedupe on both backends."""
    out = []
    for o in objects:
        if not store.is_s3(o["uri"]):
            o = {**o, "etag": hashlib.md5(store.read_bytes(o["uri"]), usedforsecurity=False).hexdigest()}
        out.append(o)
    return out


def run(config: Config) -> dict:
    if config.ledger_uri and not config.out_ledger_uri:
        raise ConfigError("ingest: out_ledger_uri is required when ledger_uri is given")
    if config.split not in schema.SPLITS:
        raise ConfigError(f"ingest: split must be one of {list(schema.SPLITS)}, got {config.split!r}")
    try:
        regex = re.compile(config.path_regex)
    except re.error as exc:
        raise ConfigError(f"ingest: path_regex {config.path_regex!r} is not a valid regex: {exc}") from None
    ds = load_dataset(config.dataset_uri)
    index_uri = store.join(config.dataset_uri, INGEST_INDEX)
    index = store.read_table(index_uri) if store.exists(index_uri) else INDEX_SCHEMA.empty_table()

    # absolute URIs: the new dataset lives under another prefix
    old_images = ds.images.set_column(
        ds.images.schema.get_field_index("uri"), "uri",
        pa.array([ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()], pa.string()),
    )
    known_uris = set(old_images.column("uri").to_pylist())
    known_ids = set(old_images.column("image_id").to_pylist())
    known_content = {(e, s) for e, s in zip(index.column("etag").to_pylist(), index.column("size").to_pylist(), strict=False)}

    exts = tuple(e.lower() for e in config.extensions)
    objects = [o for o in store.list_objects(config.source_uri) if o["uri"].lower().endswith(exts)]
    fresh = [o for o in objects if o["uri"] not in known_uris]
    skipped_existing = len(objects) - len(fresh)
    manifest = _read_manifest(config) if config.manifest else None

    rows, index_rows, skipped_dup = [], [], 0
    progress = Progress(len(fresh), "ingest", unit="img")
    for o in _content_tags(fresh):
        key = (o["etag"], int(o["size"]))
        if key in known_content:
            skipped_dup += 1
            progress.update()
            continue
        rel = _rel(o["uri"], config.source_uri)
        image_id = config.id_prefix + str(PurePosixPath(rel))
        if image_id in known_ids:
            raise ActivedetError(f"ingest: image_id {image_id!r} for {o['uri']} already names another image")
        if manifest is not None:
            if rel not in manifest:
                raise ActivedetError(f"ingest: {rel!r} is not in manifest {config.manifest}")
            meta = manifest[rel]
        else:
            meta = _meta_from_path(rel, regex)
        width, height = image_size(o["uri"])
        rows.append({"image_id": image_id, "uri": o["uri"], "width": width, "height": height, **meta, "split": config.split})
        index_rows.append({"uri": o["uri"], "etag": o["etag"], "size": int(o["size"]), "image_id": image_id})
        known_content.add(key)
        known_ids.add(image_id)
        progress.update()
    progress.close()

    new_images = pa.Table.from_pylist(rows, schema=schema.IMAGES)
    images = pa.concat_tables([schema.validate_images(old_images), new_images])
    new_index = pa.concat_tables([index.cast(INDEX_SCHEMA), pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)])
    with store.OutputWriter(config.out_dataset_uri, meta={"stage": "ingest"}) as out:
        write_dataset_tables(out, images, ds.boxes, ds.categories, {**ds.meta, "parent": config.dataset_uri})
        out.write_table(INGEST_INDEX, new_index)

    result = {
        "added": len(rows),
        "skipped_existing": skipped_existing,
        "skipped_duplicate_content": skipped_dup,
        "num_images": images.num_rows,
        "dataset_uri": config.out_dataset_uri,
        "ledger_uri": None,
        "added_image_ids": [r["image_id"] for r in rows],
    }
    if config.ledger_uri:
        ledger, meta = read_ledger(config.ledger_uri)
        in_ledger = set(ledger.column("image_id").to_pylist())
        add = [r["image_id"] for r in rows if r["split"] == "train" and r["image_id"] not in in_ledger]
        table = pa.concat_tables([
            ledger,
            schema.make_ledger(add, ["unlabeled"] * len(add), [UNSELECTED_CYCLE] * len(add)),
        ])
        with store.OutputWriter(config.out_ledger_uri, meta={"stage": "ingest"}) as out:
            write_ledger(out, table, cycle=int(meta.get("cycle", 0)), parent=config.ledger_uri, ingested=len(add))
        result["ledger_uri"] = config.out_ledger_uri
    log.info("ingest: %d new image(s), %d already registered, %d duplicate content", len(rows), skipped_existing, skipped_dup)
    return result
