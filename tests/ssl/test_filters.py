"""Pseudo-label filters on hand-built candidate tables; expected answers computed from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activedet import schema
from activedet.errors import ConfigError
from activedet.ssl.filters import (
    FILTERS,
    MERGE_IOU,
    MERGE_SCORE,
    FilterContext,
    apply_filter,
    merge_stats,
)


def table(rows, extra=None):
    """rows: (image_id, category_id, score)."""
    ids = [r[0] for r in rows]
    xyxy = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(len(rows))], np.float32)
    return schema.boxes_from_arrays(
        ids, xyxy, [r[1] for r in rows], [r[2] for r in rows], source="pred", extra=extra
    )


def kept(result):
    return sorted(zip(result.boxes.column("category_id").to_pylist(), [round(s, 4) for s in result.boxes.column("score").to_pylist()], strict=True))


CTX = FilterContext(category_ids=[1, 2, 3], pool_image_ids=["a", "b", "c", "d"])


def test_registry_lists_all_four_filters_and_rejects_unknown():
    assert FILTERS.names() == ["act", "dynamic", "fixed", "per_class_topk"]
    with pytest.raises(ConfigError, match="valid: act, dynamic, fixed, per_class_topk"):
        FILTERS.get("nope")


def test_unknown_filter_param_is_config_error():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['k'\]"):
        apply_filter("fixed", table([]), CTX, {"k": 3})


def test_fixed_keeps_scores_at_or_above_tau_class_agnostic():
    cands = table([("a", 1, 0.995), ("a", 2, 0.99), ("b", 3, 0.989), ("c", 1, 0.5)])
    res = apply_filter("fixed", cands, CTX)
    assert kept(res) == [(1, 0.995), (2, 0.99)]
    assert res.boxes.column("reliable").to_pylist() == [True, True]
    assert res.thresholds == {1: 0.99, 2: 0.99, 3: 0.99}
    assert res.weights == {1: 1.0, 2: 1.0, 3: 1.0}
    assert apply_filter("fixed", cands, CTX, {"tau": 0.5}).boxes.num_rows == 4


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.01, float("nan")])
def test_fixed_tau_outside_unit_interval_is_error(tau):
    with pytest.raises(ConfigError, match=r"tau must be in \(0, 1\]"):
        apply_filter("fixed", table([("a", 1, 0.9)]), CTX, {"tau": tau})


def test_fixed_tau_one_is_allowed():
    assert kept(apply_filter("fixed", table([("a", 1, 1.0), ("a", 1, 0.999)]), CTX, {"tau": 1.0})) == [(1, 1.0)]


def test_per_class_topk_keeps_k_percent_per_class():
    # class 1: 10 candidates -> 30% = 3; class 2: 5 candidates -> 1.5 -> rounds half up to 2;
    # class 3: 1 candidate -> 0.3 -> 0 kept
    rows = [("a", 1, s) for s in np.linspace(0.1, 1.0, 10)] + [("b", 2, s) for s in (0.2, 0.9, 0.4, 0.8, 0.3)] + [("c", 3, 0.99)]
    res = apply_filter("per_class_topk", table(rows), CTX, {"k": 30})
    assert kept(res) == [(1, 0.8), (1, 0.9), (1, 1.0), (2, 0.8), (2, 0.9)]
    assert res.thresholds[1] == pytest.approx(0.8)
    assert res.thresholds[2] == pytest.approx(0.8)
    assert res.thresholds[3] is None
    assert res.per_class[1].candidates == 10 and res.per_class[1].kept == 3


@pytest.mark.parametrize("k", [0, 101, -5])
def test_per_class_topk_rejects_bad_k(k):
    with pytest.raises(ConfigError, match="k must be a percentage"):
        apply_filter("per_class_topk", table([]), CTX, {"k": k})


def test_dynamic_thresholds_and_weights_follow_eq6():
    # class 1: 4 candidates, class 2: 1 candidate, class 3: none. n_bar = (4 + 1 + 0) / 3.
    rows = [("a", 1, 0.95), ("a", 1, 0.85), ("b", 1, 0.75), ("b", 1, 0.5), ("c", 2, 0.6)]
    res = apply_filter("dynamic", table(rows), CTX, {"tau": 0.7, "gamma1": 0.5, "gamma2": 0.6})
    n_bar = 5 / 3
    c1, c2 = 0.95 + 0.85 + 0.75 + 0.5, 0.6
    tau1 = min(max((c1 / n_bar) ** 0.5 * 0.7, 0.4), 0.9)  # 0.947 -> clipped to 0.9
    tau2 = min(max((c2 / n_bar) ** 0.5 * 0.7, 0.4), 0.9)  # 0.42
    assert res.thresholds[1] == pytest.approx(tau1)
    assert res.thresholds[2] == pytest.approx(tau2)
    assert res.weights[1] == pytest.approx((n_bar / c1) ** 0.6)
    assert res.weights[2] == pytest.approx((n_bar / c2) ** 0.6)
    assert res.weights[2] > 1 > res.weights[1]  # the rare class is up-weighted
    assert res.thresholds[3] == 0.4 and res.weights[3] == 1.0
    assert tau1 == 0.9
    assert kept(res) == [(1, 0.95), (2, 0.6)]
    assert res.info["n_bar"] == pytest.approx(n_bar)


def test_dynamic_clips_thresholds_and_uses_loc_quality():
    rows = [("a", 1, 0.9)] * 20 + [("b", 2, 0.9)]
    n_bar = 21 / 2
    ctx = FilterContext(category_ids=[1, 2])
    # without loc quality: c1 = 18 -> (18 / 10.5) * 0.7 = 1.2, clipped to 0.9; c2 = 0.9 -> 0.06 -> 0.4
    res = apply_filter("dynamic", table(rows), ctx, {"gamma1": 1.0})
    assert res.thresholds == {1: pytest.approx(0.9), 2: pytest.approx(0.4)}
    # loc quality 0.5 on class 1: c1 = 9 -> (9 / 10.5) * 0.7 = 0.6 (inside the clip range)
    cands = table(rows, extra={"loc_quality": [0.5] * 20 + [1.0]})
    res = apply_filter("dynamic", cands, ctx, {"gamma1": 1.0})
    assert res.thresholds[1] == pytest.approx(0.6)
    assert res.weights[1] == pytest.approx((n_bar / 9.0) ** 0.6)
    assert res.boxes.num_rows == 21  # 0.9 >= 0.6 and 0.9 >= 0.4
    # use_loc_quality false: v = 1 everywhere (Li et al.'s ablation), as without the column
    res = apply_filter("dynamic", cands, ctx, {"gamma1": 1.0, "use_loc_quality": False})
    assert res.thresholds == {1: pytest.approx(0.9), 2: pytest.approx(0.4)}
    with pytest.raises(ConfigError, match="use_loc_quality must be true or false"):
        apply_filter("dynamic", cands, ctx, {"use_loc_quality": "no"})


def test_dynamic_changes_with_v_from_the_certainty_head_predictions():
    """loc_quality flows from predictions into the candidates and so into c_m = sum p * v."""
    from activedet.models.types import Detections, ImagePrediction
    from activedet.ssl.pseudo_labels import candidates_from_predictions

    def preds(v):
        boxes = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(6)], np.float32)
        cats = np.array([1] * 5 + [2])
        d = Detections(boxes, cats, np.full(6, 0.8, np.float32), np.tile([[0.1, 0.8, 0.1]], (6, 1)).astype(np.float32),
                       loc_quality=None if v is None else np.asarray(v, np.float32))
        return [ImagePrediction("a", 64, 32, d)]

    ctx = FilterContext(category_ids=[1, 2])
    std = candidates_from_predictions(preds(None))
    assert std.column("loc_quality").null_count == 6  # standard head: v = 1 in dynamic
    sure = candidates_from_predictions(preds([1.0] * 6))
    unsure = candidates_from_predictions(preds([0.2] * 5 + [1.0]))
    r_std, r_sure, r_unsure = (apply_filter("dynamic", c, ctx, {"gamma1": 1.0}) for c in (std, sure, unsure))
    assert r_std.thresholds == r_sure.thresholds and r_std.weights == r_sure.weights
    # class 1: c_1 = 5 * 0.8 * 0.2 = 0.8, n_bar = 3 -> tau_1 = (0.8 / 3) * 0.7 -> clipped to 0.4
    assert r_sure.thresholds[1] == pytest.approx(0.9) and r_unsure.thresholds[1] == pytest.approx(0.4)
    assert r_unsure.weights[1] == pytest.approx((3 / 0.8) ** 0.6)
    assert r_unsure.thresholds[2] == r_sure.thresholds[2]


def test_loc_quality_gate_drops_or_marks_uncertain():
    rows = [("a", 1, 0.99), ("a", 1, 0.99), ("b", 2, 0.99)]
    cands = table(rows, extra={"loc_quality": [0.9, 0.3, None]})
    ctx = FilterContext(category_ids=[1, 2])
    off = apply_filter("fixed", cands, ctx, {"tau": 0.5})
    assert off.boxes.num_rows == 3
    drop = apply_filter("fixed", cands, ctx, {"tau": 0.5, "min_loc_quality": 0.5})
    assert drop.boxes.column("loc_quality").to_pylist() == [pytest.approx(0.9), None]  # null (no v) passes
    assert drop.per_class[1].kept == 1 and drop.info["loc_quality_gated"] == 1
    assert drop.to_json()["params"]["min_loc_quality"] == 0.5
    unc = apply_filter("dynamic", cands, ctx, {"min_loc_quality": 0.5, "below_loc_quality": "uncertain"})
    assert unc.boxes.num_rows == 3 and unc.boxes.column("reliable").to_pylist() == [True, False, True]
    assert unc.per_class[1].reliable == 1
    with pytest.raises(ConfigError, match="min_loc_quality"):
        apply_filter("fixed", cands, ctx, {"min_loc_quality": 1.5})
    with pytest.raises(ConfigError, match="below_loc_quality"):
        apply_filter("act", cands, FilterContext(category_ids=[1, 2], num_labeled_images=1), {"below_loc_quality": "keep"})


def test_dynamic_gamma_zero_disables_both_parts():
    rows = [("a", 1, 0.95), ("a", 1, 0.85), ("b", 2, 0.6)]
    res = apply_filter("dynamic", table(rows), FilterContext(category_ids=[1, 2]), {"gamma1": 0, "gamma2": 0})
    assert res.thresholds == {1: 0.7, 2: 0.7}
    assert res.weights == {1: 1.0, 2: 1.0}
    assert kept(res) == [(1, 0.85), (1, 0.95)]


def test_act_thresholds_from_labeled_distribution():
    # N_l = 2 labeled images with 2 boxes of class 1 and 1 of class 2; N_u = 4 pool images.
    # Expected in pool: class 1: 2 * 4 / 2 = 4, class 2: 1 * 4 / 2 = 2, class 3: 0.
    # alpha = 50%: reliable ranks 2 (class 1) and 1 (class 2).
    ctx = FilterContext(category_ids=[1, 2, 3], labeled_counts={1: 2, 2: 1}, num_labeled_images=2, pool_image_ids=["a", "b", "c", "d"])
    rows = [("a", 1, s) for s in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)] + [("b", 2, s) for s in (0.3, 0.2, 0.1)] + [("c", 3, 0.99)]
    res = apply_filter("act", table(rows), ctx, {"alpha": 50})
    assert res.thresholds == {1: pytest.approx(0.6), 2: pytest.approx(0.2), 3: None}
    assert res.per_class[1].reliable_threshold == pytest.approx(0.8)
    assert res.per_class[2].reliable_threshold == pytest.approx(0.3)
    got = sorted(zip(res.boxes.column("score").to_pylist(), res.boxes.column("reliable").to_pylist(), strict=True))
    assert [(round(s, 2), r) for s, r in got] == [(0.2, False), (0.3, True), (0.6, False), (0.7, False), (0.8, True), (0.9, True)]
    assert res.info["expected"] == {"1": 4.0, "2": 2.0, "3": 0.0}


def test_act_default_alpha_20_and_fewer_detections_than_expected():
    ctx = FilterContext(category_ids=[1], labeled_counts={1: 10}, num_labeled_images=1, pool_image_ids=["a"])
    rows = [("a", 1, s) for s in (0.9, 0.5, 0.3)]  # expected 10 > 3 detected: keep all
    res = apply_filter("act", table(rows), ctx)
    assert res.boxes.num_rows == 3
    # alpha 20% of 10 = 2 -> reliable threshold at rank 2 = 0.5
    assert res.per_class[1].reliable_threshold == pytest.approx(0.5)
    assert res.per_class[1].reliable == 2


def test_act_estimates_on_seeded_subset_of_large_pool():
    pool = [f"img{i}" for i in range(100)]
    ctx = FilterContext(category_ids=[1], labeled_counts={1: 10}, num_labeled_images=10, pool_image_ids=pool, seed=3)
    rows = [(f"img{i}", 1, 0.01 * i + 0.001) for i in range(100)]
    res = apply_filter("act", table(rows), ctx, {"subset_size": 20, "alpha": 50})
    # expected on the subset: 10 * 20 / 10 = 20 = all subset detections -> threshold = the subset minimum
    rng = np.random.default_rng(3)
    subset = sorted(rng.choice(100, size=20, replace=False))
    assert res.thresholds[1] == pytest.approx(0.01 * subset[0] + 0.001)
    assert res.info["estimation_images"] == 20
    # applied to the whole pool
    assert res.boxes.num_rows == 100 - subset[0]
    again = apply_filter("act", table(rows), ctx, {"subset_size": 20, "alpha": 50})
    assert again.thresholds == res.thresholds


def test_act_rplm_promotes_uncertain_boxes_with_good_merge_stats():
    ctx = FilterContext(category_ids=[1], labeled_counts={1: 4}, num_labeled_images=1, pool_image_ids=["a"])
    rows = [("a", 1, s) for s in (0.9, 0.8, 0.7, 0.6)]
    extra = {MERGE_SCORE: [0.9, 0.85, 0.81, 0.9], MERGE_IOU: [0.9, 0.95, 0.79, float("nan")]}
    cands = table(rows, extra=extra)
    plain = apply_filter("act", cands, ctx, {"alpha": 25})
    assert plain.boxes.column("reliable").to_pylist() == [True, False, False, False]
    res = apply_filter("act", cands, ctx, {"alpha": 25, "rplm": True})
    # 0.8: promoted (0.85, 0.95); 0.7: IoU 0.79 < 0.8; 0.6: no merged boxes (NaN)
    assert res.boxes.column("reliable").to_pylist() == [True, True, False, False]
    assert res.info["rplm_promoted"] == 1


def test_act_rplm_without_pre_nms_columns_is_error():
    ctx = FilterContext(category_ids=[1], labeled_counts={1: 1}, num_labeled_images=1, pool_image_ids=["a"])
    with pytest.raises(ConfigError, match="rplm needs pre-NMS"):
        apply_filter("act", table([("a", 1, 0.5)]), ctx, {"rplm": True})


def test_act_without_labeled_images_is_error():
    with pytest.raises(ConfigError, match="N_l = 0"):
        apply_filter("act", table([("a", 1, 0.5)]), FilterContext(category_ids=[1]), {})


def test_filters_accept_empty_candidates():
    ctx = FilterContext(category_ids=[1, 2], labeled_counts={1: 1}, num_labeled_images=1, pool_image_ids=["a"])
    for name in FILTERS.names():
        res = apply_filter(name, table([]), ctx)
        assert res.boxes.num_rows == 0
        assert "reliable" in res.boxes.column_names
        doc = res.to_json()
        assert doc["filter"] == name and set(doc["classes"]) == {"1", "2"}


def test_merge_stats_excludes_the_kept_box_itself():
    kept_boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)
    pre = np.array([[0, 0, 10, 10], [0, 0, 10, 8], [1, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], float)
    scores = np.array([0.9, 0.7, 0.5, 0.8, 0.3])
    merged = np.array([0, 0, 0, 1, -1])
    ms, mi = merge_stats(kept_boxes, pre, scores, merged)
    assert ms[0] == pytest.approx(0.6)
    assert mi[0] == pytest.approx((0.8 + 0.9) / 2)
    assert math.isnan(ms[1]) and math.isnan(mi[1])
