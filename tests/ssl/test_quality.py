"""Pseudo-label quality report on hand-built tables."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from activedet import schema
from activedet.ssl.quality import flat_metrics, match_tp, pseudo_label_quality

CATS = pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["car", "person"]})


def boxes(rows, source, reliable=None):
    """rows: (image_id, category_id, score, (x1, y1, x2, y2))."""
    extra = {"reliable": reliable} if reliable is not None else None
    return schema.boxes_from_arrays(
        [r[0] for r in rows], [r[3] for r in rows], [r[1] for r in rows], [r[2] for r in rows], source=source, extra=extra
    )


GT = boxes(
    [
        ("a", 1, 1.0, (0, 0, 10, 10)),
        ("a", 1, 1.0, (20, 20, 30, 30)),
        ("a", 2, 1.0, (50, 50, 60, 70)),
        ("b", 1, 1.0, (0, 0, 10, 10)),
    ],
    "gt",
)


def test_greedy_class_aware_matching_by_score():
    pseudo = boxes(
        [
            ("a", 1, 0.6, (0, 0, 10, 10)),  # duplicate of the next one, lower score: FP
            ("a", 1, 0.9, (0, 0, 10, 11)),  # TP (IoU 0.91)
            ("a", 2, 0.8, (20, 20, 30, 30)),  # right place, wrong class: FP
            ("b", 1, 0.7, (0, 0, 10, 30)),  # IoU 1/3: FP
        ],
        "pseudo",
    )
    assert match_tp(pseudo, GT).tolist() == [False, True, False, False]


def test_report_precision_recall_and_kl():
    pseudo = boxes(
        [
            ("a", 1, 0.9, (0, 0, 10, 10)),  # TP
            ("a", 1, 0.8, (20, 20, 30, 31)),  # TP
            ("a", 1, 0.7, (50, 50, 60, 70)),  # FP (it is a person)
            ("b", 2, 0.6, (0, 0, 10, 10)),  # FP
        ],
        "pseudo",
        reliable=[True, False, True, True],
    )
    rep = pseudo_label_quality(pseudo, GT, CATS)
    assert rep["precision"] == pytest.approx(2 / 4)
    assert rep["recall"] == pytest.approx(2 / 4)
    assert rep["reliable_precision"] == pytest.approx(1 / 3)
    assert rep["reliable_recall"] == pytest.approx(1 / 4)
    # GT shares: car 3/4, person 1/4; pseudo shares: car 3/4, person 1/4 -> KL 0
    assert rep["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    car, person = rep["per_class"]["car"], rep["per_class"]["person"]
    assert (car["precision"], car["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (person["precision"], person["recall"]) == (0.0, 0.0)
    flat = flat_metrics(rep)
    assert flat["pseudo_precision"] == pytest.approx(0.5)
    assert flat["pseudo_car_recall"] == pytest.approx(2 / 3)


def test_kl_divergence_of_skewed_distribution():
    pseudo = boxes([("a", 1, 0.9, (0, 0, 10, 10)), ("a", 2, 0.9, (50, 50, 60, 70))], "pseudo")
    rep = pseudo_label_quality(pseudo, GT, CATS)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert rep["kl_divergence"] == pytest.approx(expected, rel=1e-4)
    terms = [rep["per_class"][n]["kl_term"] for n in ("car", "person")]
    assert sum(terms) == pytest.approx(expected, rel=1e-4)


def test_empty_pseudo_labels_give_undefined_precision_zero_recall():
    rep = pseudo_label_quality(boxes([], "pseudo"), GT, CATS)
    assert rep["precision"] is None
    assert rep["recall"] == 0.0
    assert rep["kl_divergence"] is None
    assert "pseudo_precision" not in flat_metrics(rep)
