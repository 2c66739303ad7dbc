"""The data contract: every Parquet table activedet reads or writes, and its validators.

Tables (box format is always ``xyxy`` in absolute pixels):

* **images** -- one row per image: ``image_id`` (unique), ``uri``, ``width``, ``height``,
  ``sequence_id``/``frame_index``/``timestamp`` (nullable; driving logs), ``split``.
* **boxes** -- one row per box: ``image_id``, ``x1, y1, x2, y2`` (float32), ``category_id``
  (int32), ``score`` (float32, 1.0 for ground truth), ``source`` (gt / pseudo / pred), plus the
  optional columns later stages add: ``reliable`` (bool), ``loc_quality`` (float32 in [0, 1], the
  certainty-aware box head's localization quality ``v``; null where the detector gives none),
  ``class_probs`` (list<float32>, C + 1 entries: index 0 is background, index k is the k-th
  category in ascending ``id`` order -- torchvision's label convention).
* **categories** -- ``id``, ``name``; stored once per dataset.
* **ledger** -- ``image_id``, ``state`` (labeled / unlabeled / pending), ``cycle``.
* **scores** -- one row per image: ``image_id``, one float64 column per acquisition score, and
  optionally ``embedding`` (fixed-size list<float32>) and ``pred_classes`` (list<int32>).
* **selection** -- ``image_id``, ``rank``, ``strategy``, ``score``.

Validators cast to the canonical schema and raise :class:`~activedet.errors.SchemaError` whose
message names the table, the column, the number of bad rows and the first offending image_id.
Every stage validates what it reads and what it writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from activedet.errors import SchemaError

SPLITS = ("train", "val", "test")
BOX_SOURCES = ("gt", "pseudo", "pred")
LEDGER_STATES = ("labeled", "unlabeled", "pending")
BOX_COORDS = ("x1", "y1", "x2", "y2")

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("sequence_id", pa.string()),
        pa.field("frame_index", pa.int32()),
        pa.field("timestamp", pa.float64()),
        pa.field("split", pa.string(), nullable=False),
    ]
)

BOXES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("x1", pa.float32(), nullable=False),
        pa.field("y1", pa.float32(), nullable=False),
        pa.field("x2", pa.float32(), nullable=False),
        pa.field("y2", pa.float32(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

#: Optional box columns and their types; any subset may be present.
BOX_OPTIONAL = {
    "reliable": pa.bool_(),
    "loc_quality": pa.float32(),
    "class_probs": pa.list_(pa.float32()),
    "iscrowd": pa.bool_(),
    "track_id": pa.string(),
}

CATEGORIES = pa.schema(
    [pa.field("id", pa.int32(), nullable=False), pa.field("name", pa.string(), nullable=False)]
)

LEDGER = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("cycle", pa.int32(), nullable=False),
    ]
)

SELECTION = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ValidationReport:
    """What a validator changed while accepting a table (for logs and metrics)."""

    rows: int
    clipped: int = 0
    dropped: int = 0


# --------------------------------------------------------------------------- helpers


def _fail(table: str, column: str, bad_mask: np.ndarray, image_ids, what: str, where: str | None):
    count = int(bad_mask.sum())
    first_idx = int(np.flatnonzero(bad_mask)[0])
    first = image_ids[first_idx] if image_ids is not None else first_idx
    loc = f" in {where}" if where else ""
    raise SchemaError(
        f"{table} table{loc}: column '{column}': {count} bad row(s) ({what}); first image_id {first!r}"
    )


def _require_columns(name: str, table: pa.Table, schema: pa.Schema, where: str | None) -> None:
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        loc = f" in {where}" if where else ""
        raise SchemaError(
            f"{name} table{loc}: missing column(s) {missing}; expected {schema.names}"
        )


def _cast(name: str, table: pa.Table, schema: pa.Schema, optional: dict | None, where: str | None) -> pa.Table:
    """Select the schema's columns (+ known optional ones) in order and cast them."""
    _require_columns(name, table, schema, where)
    fields = list(schema)
    for col, typ in (optional or {}).items():
        if col in table.column_names:
            fields.append(pa.field(col, typ))
    arrays = []
    for f in fields:
        col = table.column(f.name)
        if f.name == "class_probs" and pa.types.is_fixed_size_list(col.type):
            col = col.cast(pa.list_(pa.float32()))
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            loc = f" in {where}" if where else ""
            raise SchemaError(
                f"{name} table{loc}: column '{f.name}' has type {col.type}, expected {f.type} ({exc})"
            ) from None
        if not f.nullable and arrays[-1].null_count:
            ids = _ids(table)
            mask = arrays[-1].is_null().to_numpy(zero_copy_only=False)
            _fail(name, f.name, mask, ids, "null value", where)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _duplicate_mask(values) -> np.ndarray:
    """True for every occurrence of a value after its first."""
    seen: set = set()
    mask = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        mask[i] = v in seen
        seen.add(v)
    return mask


def _ids(table: pa.Table):
    if "image_id" in table.column_names:
        return table.column("image_id").to_pylist()
    return None


def _check_members(name, table, column, allowed, where):
    values = table.column(column)
    mask = ~pc.is_in(values, value_set=pa.array(list(allowed))).to_numpy(zero_copy_only=False)
    if mask.any():
        _fail(name, column, mask, _ids(table), f"must be one of {list(allowed)}", where)


# --------------------------------------------------------------------------- validators


def validate_images(table: pa.Table, *, where: str | None = None) -> pa.Table:
    """Validate and cast an images table: unique ids, positive sizes, known splits."""
    table = _cast("images", table, IMAGES, None, where)
    ids = table.column("image_id").to_pylist()
    dup = _duplicate_mask(ids)
    if dup.any():
        _fail("images", "image_id", dup, ids, "duplicate image_id", where)
    for col in ("width", "height"):
        mask = table.column(col).to_numpy() <= 0
        if mask.any():
            _fail("images", col, mask, ids, "must be > 0", where)
    _check_members("images", table, "split", SPLITS, where)
    return table


def validate_categories(table: pa.Table, *, where: str | None = None) -> pa.Table:
    """Validate and cast a categories table: unique ids and names."""
    table = _cast("categories", table, CATEGORIES, None, where)
    for col in ("id", "name"):
        values = table.column(col).to_pylist()
        dup = _duplicate_mask(values)
        if dup.any():
            loc = f" in {where}" if where else ""
            dups = sorted({v for v, d in zip(values, dup, strict=True) if d}, key=str)
            raise SchemaError(f"categories table{loc}: column '{col}': duplicate value(s) {dups[:5]}")
    return table


def validate_boxes(
    table: pa.Table,
    *,
    images: pa.Table | None = None,
    categories: pa.Table | None = None,
    clip: bool = True,
    where: str | None = None,
) -> tuple[pa.Table, ValidationReport]:
    """Validate and cast a boxes table.

    Rejects NaN/inf coordinates, ``x2 <= x1`` or ``y2 <= y1``, unknown ``source``, scores outside
    [0, 1], ``loc_quality`` outside [0, 1] (null allowed), and -- when ``categories``/``images``
    are given -- unknown categories, unknown image_ids and boxes entirely outside their image.
    Boxes partly outside the image are clipped to it (when ``clip``); the report counts them.
    """
    table = _cast("boxes", table, BOXES, BOX_OPTIONAL, where)
    ids = table.column("image_id").to_pylist()
    coords = {c: table.column(c).to_numpy().astype(np.float64) for c in BOX_COORDS}
    for c in BOX_COORDS:
        mask = ~np.isfinite(coords[c])
        if mask.any():
            _fail("boxes", c, mask, ids, "NaN or infinite coordinate", where)
    for lo, hi in (("x1", "x2"), ("y1", "y2")):
        mask = coords[hi] <= coords[lo]
        if mask.any():
            _fail("boxes", hi, mask, ids, f"{hi} <= {lo}", where)
    score = table.column("score").to_numpy()
    mask = ~np.isfinite(score) | (score < 0) | (score > 1)
    if mask.any():
        _fail("boxes", "score", mask, ids, "score must be in [0, 1]", where)
    if "loc_quality" in table.column_names:  # null = the detector gives none (standard box head)
        q = table.column("loc_quality").to_numpy(zero_copy_only=False).astype(np.float64)
        mask = ~np.isnan(q) & ((q < 0) | (q > 1) | ~np.isfinite(q))
        if mask.any():
            _fail("boxes", "loc_quality", mask, ids, "loc_quality must be in [0, 1] or null", where)
    _check_members("boxes", table, "source", BOX_SOURCES, where)
    if categories is not None:
        known = pa.array(categories.column("id").cast(pa.int32()).to_pylist(), pa.int32())
        mask = ~pc.is_in(table.column("category_id"), value_set=known).to_numpy(zero_copy_only=False)
        if mask.any():
            _fail("boxes", "category_id", mask, ids, "unknown category", where)
    clipped = 0
    if images is not None and table.num_rows:
        table, clipped = _clip_to_images(table, images, coords, ids, clip, where)
    return table, ValidationReport(rows=table.num_rows, clipped=clipped)


def _clip_to_images(table, images, coords, ids, clip, where):
    index = {iid: i for i, iid in enumerate(images.column("image_id").to_pylist())}
    pos = np.array([index.get(i, -1) for i in ids], dtype=np.int64)
    mask = pos < 0
    if mask.any():
        _fail("boxes", "image_id", mask, ids, "unknown image_id (not in images table)", where)
    w = images.column("width").to_numpy().astype(np.float64)[pos]
    h = images.column("height").to_numpy().astype(np.float64)[pos]
    x1, y1, x2, y2 = (coords[c] for c in BOX_COORDS)
    outside = (x2 <= 0) | (y2 <= 0) | (x1 >= w) | (y1 >= h)
    if outside.any():
        _fail("boxes", "x1", outside, ids, "box entirely outside the image", where)
    partly = (x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h)
    if not partly.any():
        return table, 0
    if not clip:
        _fail("boxes", "x1", partly, ids, "box partly outside the image", where)
    new = {
        "x1": np.clip(x1, 0, w),
        "y1": np.clip(y1, 0, h),
        "x2": np.clip(x2, 0, w),
        "y2": np.clip(y2, 0, h),
    }
    for c in BOX_COORDS:
        idx = table.schema.get_field_index(c)  # keep the canonical field (not null) so tables concat
        table = table.set_column(idx, table.schema.field(idx), pa.array(new[c].astype(np.float32)))
    return table, int(partly.sum())


def validate_ledger(table: pa.Table, *, images: pa.Table | None = None, where: str | None = None) -> pa.Table:
    """Validate and cast a ledger: unique image_ids, known states, ids present in ``images``."""
    table = _cast("ledger", table, LEDGER, None, where)
    ids = table.column("image_id").to_pylist()
    dup = _duplicate_mask(ids)
    if dup.any():
        _fail("ledger", "image_id", dup, ids, "duplicate image_id", where)
    _check_members("ledger", table, "state", LEDGER_STATES, where)
    if images is not None:
        known = set(images.column("image_id").to_pylist())
        mask = np.array([i not in known for i in ids], bool)
        if mask.any():
            _fail("ledger", "image_id", mask, ids, "unknown image_id (not in images table)", where)
    return table


def validate_selection(table: pa.Table, *, where: str | None = None) -> pa.Table:
    """Validate and cast a selection table (unique image_ids, ranks from 0)."""
    table = _cast("selection", table, SELECTION, None, where)
    ids = table.column("image_id").to_pylist()
    dup = _duplicate_mask(ids)
    if dup.any():
        _fail("selection", "image_id", dup, ids, "duplicate image_id", where)
    return table


def scores_schema(score_names: Iterable[str], embedding_dim: int | None = None) -> pa.Schema:
    """Schema of a per-image scores table with the given score columns."""
    fields = [pa.field("image_id", pa.string(), nullable=False)]
    fields += [pa.field(n, pa.float64()) for n in score_names]
    fields.append(pa.field("num_boxes", pa.int32()))
    fields.append(pa.field("pred_classes", pa.list_(pa.int32())))
    if embedding_dim:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_dim)))
    return pa.schema(fields)


def validate_scores(table: pa.Table, *, where: str | None = None) -> pa.Table:
    """Validate a scores table: unique image_ids, float score columns, fixed-size embeddings."""
    if "image_id" not in table.column_names:
        loc = f" in {where}" if where else ""
        raise SchemaError(f"scores table{loc}: missing column 'image_id'")
    ids = table.column("image_id").to_pylist()
    dup = _duplicate_mask(ids)
    if dup.any():
        _fail("scores", "image_id", dup, ids, "duplicate image_id", where)
    if "embedding" in table.column_names:
        typ = table.schema.field("embedding").type
        if not pa.types.is_fixed_size_list(typ):
            loc = f" in {where}" if where else ""
            raise SchemaError(f"scores table{loc}: column 'embedding' must be a fixed-size list<float32>, got {typ}")
    return table


# --------------------------------------------------------------------------- constructors


def empty(schema: pa.Schema) -> pa.Table:
    """An empty table of ``schema``."""
    return schema.empty_table()


def boxes_from_arrays(
    image_ids,
    xyxy: np.ndarray,
    category_ids,
    scores=None,
    *,
    source: str,
    extra: dict | None = None,
) -> pa.Table:
    """Build a boxes table from arrays; ``xyxy`` has shape ``[N, 4]`` (absolute pixels)."""
    xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    n = len(xyxy)
    cols = {
        "image_id": pa.array(list(image_ids), pa.string()),
        "x1": pa.array(xyxy[:, 0]),
        "y1": pa.array(xyxy[:, 1]),
        "x2": pa.array(xyxy[:, 2]),
        "y2": pa.array(xyxy[:, 3]),
        "category_id": pa.array(np.asarray(category_ids, dtype=np.int32).reshape(n)),
        "score": pa.array(
            np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(n)
        ),
        "source": pa.array([source] * n, pa.string()),
    }
    for name, values in (extra or {}).items():
        typ = BOX_OPTIONAL.get(name)
        cols[name] = pa.array(values, typ) if typ is not None else pa.array(values)
    return pa.table(cols)


def make_ledger(image_ids, states, cycle: int | Iterable[int]) -> pa.Table:
    """Build a ledger table; ``cycle`` is one int for all rows or one per row."""
    image_ids = list(image_ids)
    states = list(states)
    cycles = [cycle] * len(image_ids) if isinstance(cycle, int) else list(cycle)
    return pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "state": pa.array(states, pa.string()),
            "cycle": pa.array(cycles, pa.int32()),
        },
        schema=LEDGER,
    )
