"""The data contract: every bad case is rejected with a message naming table, column, count and
first offending image_id; partly-outside boxes are clipped and counted."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activedet import schema
from activedet.errors import SchemaError


def _images(ids=("a", "b", "c"), width=100, height=50, split="train") -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "image_id": list(ids),
            "uri": [f"images/{i}.png" for i in ids],
            "width": [width] * n,
            "height": [height] * n,
            "sequence_id": [None] * n,
            "frame_index": [None] * n,
            "timestamp": [None] * n,
            "split": [split] * n if isinstance(split, str) else list(split),
        }
    )


CATS = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["car", "person"]})


def _boxes(rows, source="gt", **extra) -> pa.Table:
    ids = [r[0] for r in rows]
    xyxy = np.array([r[1:5] for r in rows], np.float64).reshape(-1, 4)
    cats = [r[5] if len(r) > 5 else 1 for r in rows]
    return schema.boxes_from_arrays(ids, xyxy, cats, source=source, extra=extra or None)


def _validate(rows, **kwargs):
    images = schema.validate_images(_images())
    return schema.validate_boxes(_boxes(rows), images=images, categories=CATS, **kwargs)


# --------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    "rows, column, count, first, what",
    [
        ([("a", 1, 1, 5, 5), ("b", 5, 1, 5, 5), ("c", 9, 1, 3, 5)], "x2", 2, "b", "x2 <= x1"),
        ([("a", 1, 1, 5, 5), ("c", 1, 4, 5, 4)], "y2", 1, "c", "y2 <= y1"),
        ([("a", 1, 1, 5, 5), ("b", math.nan, 1, 5, 5)], "x1", 1, "b", "NaN"),
        ([("c", 1, 1, 5, math.inf), ("a", 1, 1, 5, math.nan)], "y2", 2, "c", "NaN or infinite"),
        ([("a", 1, 1, 5, 5, 1), ("b", 1, 1, 5, 5, 7), ("c", 1, 1, 5, 5, 9)], "category_id", 2, "b", "unknown category"),
        ([("a", 1, 1, 5, 5), ("zz", 1, 1, 5, 5), ("yy", 1, 1, 5, 5)], "image_id", 2, "zz", "unknown image_id"),
        ([("a", 1, 1, 5, 5), ("b", 101, 1, 120, 5)], "x1", 1, "b", "entirely outside"),
        ([("c", -20, 1, -5, 5)], "x1", 1, "c", "entirely outside"),
        ([("a", 1, 50, 5, 60)], "x1", 1, "a", "entirely outside"),
    ],
)
def test_bad_boxes_are_rejected_with_table_column_count_and_first_id(rows, column, count, first, what):
    with pytest.raises(SchemaError) as info:
        _validate(rows, where="s3://b/ds/boxes.parquet")
    msg = str(info.value)
    assert msg.startswith("boxes table in s3://b/ds/boxes.parquet")
    assert f"column '{column}'" in msg
    assert f"{count} bad row(s)" in msg
    assert f"first image_id '{first}'" in msg
    assert what in msg
    assert "\n" not in msg


def test_bad_source_and_score():
    table = _boxes([("a", 1, 1, 5, 5)], source="teacher")
    with pytest.raises(SchemaError, match=r"column 'source': 1 bad row\(s\) \(must be one of"):
        schema.validate_boxes(table)
    table = schema.boxes_from_arrays(["a", "b"], [[1, 1, 5, 5]] * 2, [1, 1], [0.5, 1.5], source="pred")
    with pytest.raises(SchemaError, match=r"column 'score': 1 bad row\(s\).*first image_id 'b'"):
        schema.validate_boxes(table)


def test_partly_outside_boxes_are_clipped_and_counted():
    rows = [("a", -5, 2, 20, 10), ("b", 90, 40, 130, 70), ("c", 1, 1, 5, 5)]
    table, report = _validate(rows)
    assert report.clipped == 2 and report.rows == 3
    assert table.column("x1").to_pylist()[0] == 0
    assert table.column("x2").to_pylist()[1] == 100 and table.column("y2").to_pylist()[1] == 50
    assert table.column("x1").to_pylist()[2] == 1  # untouched


def test_partly_outside_boxes_rejected_when_not_clipping():
    with pytest.raises(SchemaError, match="partly outside.*first image_id 'b'"):
        _validate([("a", 1, 1, 5, 5), ("b", 90, 40, 130, 70)], clip=False)


def test_clipped_table_keeps_the_canonical_schema():
    # Regression: clipping used to replace x1..y2 by nullable fields, so a clipped and an
    # unclipped table could not be concatenated.
    clipped, report = _validate([("a", -5, 2, 20, 10)])
    plain, _ = _validate([("a", 1, 2, 20, 10)])
    assert report.clipped == 1
    assert clipped.schema.equals(schema.BOXES)
    assert pa.concat_tables([clipped, plain]).num_rows == 2


def test_missing_column_names_it():
    table = _boxes([("a", 1, 1, 5, 5)]).drop_columns(["y2"])
    with pytest.raises(SchemaError, match=r"boxes table: missing column\(s\) \['y2'\]"):
        schema.validate_boxes(table)


@pytest.mark.parametrize(
    "column, values, expected",
    [("x1", pa.array(["abc"]), "float"), ("category_id", pa.array([1.5]), "int32")],
)
def test_wrong_dtype_names_column_and_types(column, values, expected):
    table = _boxes([("a", 1, 1, 5, 5)])
    table = table.set_column(table.schema.get_field_index(column), column, values)
    with pytest.raises(SchemaError, match=f"column '{column}' has type .* expected {expected}"):
        schema.validate_boxes(table)


def test_compatible_dtypes_are_cast():
    table = pa.table(
        {
            "image_id": ["a"], "x1": [1], "y1": [1], "x2": [5.0], "y2": [5.0],
            "category_id": pa.array([2], pa.int64()), "score": [1.0], "source": ["gt"], "junk": [3],
        }
    )
    out, _ = schema.validate_boxes(table)
    assert out.schema.equals(schema.BOXES)  # unknown extra columns are dropped


def test_null_in_required_column():
    table = _boxes([("a", 1, 1, 5, 5), ("b", 1, 1, 5, 5)])
    table = table.set_column(table.schema.get_field_index("y1"), "y1", pa.array([1.0, None], pa.float32()))
    with pytest.raises(SchemaError, match=r"column 'y1': 1 bad row\(s\) \(null value\); first image_id 'b'"):
        schema.validate_boxes(table)


def test_loc_quality_in_unit_interval_or_null():
    boxes = [[1, 1, 5, 5]] * 3
    ok = schema.boxes_from_arrays(["a", "b", "c"], boxes, [1] * 3, source="pred", extra={"loc_quality": [0.0, None, 1.0]})
    out, _ = schema.validate_boxes(ok)
    assert out.column("loc_quality").to_pylist() == [0.0, None, 1.0]
    bad = schema.boxes_from_arrays(["a", "b", "c"], boxes, [1] * 3, source="pred", extra={"loc_quality": [0.5, 1.2, -0.1]})
    with pytest.raises(SchemaError, match=r"column 'loc_quality': 2 bad row\(s\).*first image_id 'b'"):
        schema.validate_boxes(bad)


def test_optional_columns_kept_and_typed():
    table = _boxes([("a", 1, 1, 5, 5)], iscrowd=[True], track_id=["t1"])
    out, _ = schema.validate_boxes(table)
    assert out.column("iscrowd").to_pylist() == [True]
    assert out.schema.field("track_id").type == pa.string()


# --------------------------------------------------------------------------- images / categories / ledger


def test_duplicate_image_id():
    with pytest.raises(SchemaError, match=r"images table: column 'image_id': 2 bad row\(s\) \(duplicate image_id\); first image_id 'b'"):
        schema.validate_images(_images(ids=("a", "b", "b", "c", "b")))


def test_bad_split():
    with pytest.raises(SchemaError, match=r"column 'split': 1 bad row\(s\).*first image_id 'b'"):
        schema.validate_images(_images(split=["train", "training", "val"]))


@pytest.mark.parametrize("col", ["width", "height"])
def test_non_positive_size(col):
    table = _images()
    table = table.set_column(table.schema.get_field_index(col), col, pa.array([10, 0, -1]))
    with pytest.raises(SchemaError, match=rf"column '{col}': 2 bad row\(s\) \(must be > 0\); first image_id 'b'"):
        schema.validate_images(table)


def test_images_wrong_dtype_and_missing_column():
    table = _images()
    table = table.set_column(table.schema.get_field_index("width"), "width", pa.array(["x", "y", "z"]))
    with pytest.raises(SchemaError, match="images table.*column 'width' has type string, expected int32"):
        schema.validate_images(table)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['split'\]"):
        schema.validate_images(_images().drop_columns(["split"]))


def test_duplicate_category():
    cats = pa.table({"id": [1, 2, 2], "name": ["car", "person", "bike"]})
    with pytest.raises(SchemaError, match=r"categories table: column 'id': duplicate value\(s\) \[2\]"):
        schema.validate_categories(cats)


def test_ledger_bad_state_duplicate_and_unknown_image():
    images = schema.validate_images(_images())
    with pytest.raises(SchemaError, match=r"ledger table: column 'state': 1 bad row\(s\).*first image_id 'b'"):
        schema.validate_ledger(schema.make_ledger(["a", "b"], ["labeled", "done"], 0))
    with pytest.raises(SchemaError, match="duplicate image_id.*first image_id 'a'"):
        schema.validate_ledger(schema.make_ledger(["a", "b", "a"], ["labeled"] * 3, 0))
    with pytest.raises(SchemaError, match="unknown image_id.*first image_id 'q'"):
        schema.validate_ledger(schema.make_ledger(["a", "q"], ["labeled", "pending"], 1), images=images)


def test_selection_duplicate():
    table = pa.table({"image_id": ["a", "a"], "rank": [0, 1], "strategy": ["random"] * 2, "score": [0.1, 0.2]})
    with pytest.raises(SchemaError, match="selection table.*duplicate image_id"):
        schema.validate_selection(table)


# --------------------------------------------------------------------------- properties

W, H = 100, 50
coord = st.floats(min_value=-200, max_value=300, allow_nan=False, width=32)


@st.composite
def valid_box(draw):
    # quarter-pixel grid: exactly representable in float32, so x2 > x1 survives the cast
    x1 = draw(st.integers(0, 4 * W - 2))
    y1 = draw(st.integers(0, 4 * H - 2))
    x2 = draw(st.integers(x1 + 1, 4 * W))
    y2 = draw(st.integers(y1 + 1, 4 * H))
    return (draw(st.sampled_from(["a", "b", "c"])), x1 / 4, y1 / 4, x2 / 4, y2 / 4, draw(st.sampled_from([1, 2])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_box(), max_size=20))
def test_valid_boxes_always_validate_unchanged(rows):
    table, report = _validate(rows)
    assert report.rows == len(rows) and report.clipped == 0
    np.testing.assert_array_equal(table.column("x1").to_numpy(), _boxes(rows).column("x1").to_numpy())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=20))
def test_clipping_keeps_boxes_inside_and_valid(raw):
    rows = []
    for x1, y1, x2, y2 in raw:
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 - x1 < 0.01 or y2 - y1 < 0.01 or x2 <= 0 or y2 <= 0 or x1 >= W or y1 >= H:
            continue
        rows.append(("a", x1, y1, x2, y2))
    if not rows:
        return
    table, report = _validate(rows)
    xs1, ys1, xs2, ys2 = (table.column(c).to_numpy() for c in schema.BOX_COORDS)
    assert (xs1 >= 0).all() and (ys1 >= 0).all() and (xs2 <= W).all() and (ys2 <= H).all()
    assert (xs2 > xs1).all() and (ys2 > ys1).all()
    outside = sum(r[1] < 0 or r[2] < 0 or r[3] > W or r[4] > H for r in rows)
    assert report.clipped == outside
    # clipping is idempotent: the clipped table validates with nothing left to clip
    again, report2 = schema.validate_boxes(table, images=schema.validate_images(_images()), categories=CATS)
    assert report2.clipped == 0 and again.equals(table)
