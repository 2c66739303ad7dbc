from __future__ import annotations

import numpy as np
import pytest
from al_helpers import dets, prediction

from activedet.al import scores as S
from activedet.errors import ActivedetError, ConfigError

BOX = [[10, 10, 30, 30]]


def test_entropy_orders_crafted_distributions():
    confident = prediction("a", BOX, [[0.02, 0.96, 0.01, 0.01]])
    unsure = prediction("b", BOX, [[0.1, 0.5, 0.3, 0.1]])
    uniform = prediction("c", BOX, [[0.25, 0.25, 0.25, 0.25]])
    score = S.EntropyScore(score_floor=0.0)
    values = [score(p) for p in (confident, unsure, uniform)]
    assert values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(np.log(4), rel=1e-6)


def test_entropy_aggregations_and_floor():
    probs = [[0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]]
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10]]
    p = prediction("a", boxes, probs, scores=[0.9, 0.9])
    h = np.log(4)
    assert S.EntropyScore(aggregation="max")(p) == pytest.approx(h, rel=1e-5)
    assert S.EntropyScore(aggregation="mean")(p) == pytest.approx(h / 2, rel=1e-4)
    assert S.EntropyScore(aggregation="sum")(p) == pytest.approx(h, rel=1e-4)
    # the uncertain box is below the floor: only the confident one counts
    low = prediction("b", boxes, probs, scores=[0.01, 0.9])
    assert S.EntropyScore(score_floor=0.05)(low) == pytest.approx(0.0, abs=1e-4)


def test_no_boxes_scores_zero_and_bad_aggregation_rejected():
    empty = prediction("a", np.zeros((0, 4)), np.zeros((0, 4)))
    assert S.EntropyScore()(empty) == 0.0
    with pytest.raises(ActivedetError, match="aggregation"):
        S.EntropyScore(aggregation="median")


def test_nan_box_scores_are_ignored():
    p = prediction("a", [[0, 0, 10, 10], [20, 0, 30, 10]], [[np.nan] * 4, [0.25] * 4], scores=[0.9, 0.9])

    class Raw(S.AcquisitionScore):
        name = "raw"

        def box_scores(self, pred, keep):
            return np.array([np.nan, 1.5])

    assert Raw()(p) == 1.5


def test_inconsistency_zero_for_flip_consistent_predictions():
    boxes = [[0, 0, 10, 10], [30, 5, 50, 25]]
    probs = [[0.1, 0.7, 0.1, 0.1], [0.2, 0.2, 0.5, 0.1]]
    p = prediction("a", boxes, probs, flipped=dets(boxes, probs))
    for div in ("kl", "js"):
        assert S.InconsistencyScore(divergence=div)(p) == pytest.approx(0.0, abs=1e-9)


def test_inconsistency_grows_with_disagreement():
    base = [0.1, 0.7, 0.1, 0.1]
    values = {}
    for div in ("kl", "js"):
        out = []
        for t in (0.0, 0.3, 0.6):
            other = [0.1, 0.7 - t, 0.1 + t, 0.1]
            # flipped-back box slightly shifted: still matched by IoU
            p = prediction("a", BOX, [base], flipped=dets([[11, 10, 31, 30]], [other], scores=[0.9]))
            out.append(S.InconsistencyScore(divergence=div)(p))
        assert out[0] == pytest.approx(0.0, abs=1e-9) and out[0] < out[1] < out[2]
        values[div] = out
    assert values["js"][2] <= np.log(2)


def test_inconsistency_unmatched_boxes_as_documented():
    probs = [[0.1, 0.8, 0.05, 0.05]]
    only_original = prediction("a", BOX, probs, flipped=dets(np.zeros((0, 4)), np.zeros((0, 4))))
    assert S.InconsistencyScore(unmatched="ignore")(only_original) == 0.0
    assert S.InconsistencyScore(unmatched="background")(only_original) > 1.0
    # seen only in the flipped view: ignored by default, inconsistent against background
    only_flipped = prediction("b", np.zeros((0, 4)), np.zeros((0, 4)), flipped=dets(BOX, probs))
    assert S.InconsistencyScore()(only_flipped) == 0.0
    assert S.InconsistencyScore(unmatched="background")(only_flipped) > 1.0
    # far-away boxes do not match
    apart = prediction("c", BOX, probs, flipped=dets([[40, 0, 60, 20]], probs))
    assert S.InconsistencyScore(unmatched="ignore")(apart) == 0.0
    assert S.InconsistencyScore(unmatched="background")(apart) > 1.0


def test_inconsistency_flicker_across_the_floor_is_no_phantom_disagreement():
    """A box seen in one view only because its score crossed the floor in the other must not
    outrank a genuinely disagreeing matched pair (it did with unmatched="background" by default)."""
    disagree_o, disagree_f = [0.1, 0.6, 0.2, 0.1], [0.1, 0.3, 0.5, 0.1]
    flicker = [0.9, 0.06, 0.02, 0.02]  # score 0.06 here; 0.04 in the flipped view: cut by the predictor
    orig = dets([[0, 0, 10, 10], [40, 0, 60, 20]], [disagree_o, flicker])
    flip = dets([[0, 0, 10, 10]], [disagree_f])
    p = prediction("a", orig.boxes, orig.class_probs, flipped=flip)
    matched = float(S.symmetric_kl(np.array(disagree_o), np.array(disagree_f)))
    assert S.InconsistencyScore()(p) == pytest.approx(matched)
    assert S.InconsistencyScore(unmatched="background")(p) > 2 * matched  # the phantom, when asked for
    # with the partner kept (the stage's predictor floor sits below the scorer's), it matches
    flip_low = dets([[0, 0, 10, 10], [41, 0, 61, 20]], [disagree_f, [0.92, 0.04, 0.02, 0.02]])
    p_low = prediction("b", orig.boxes, orig.class_probs, flipped=flip_low)
    assert S.InconsistencyScore(unmatched="background")(p_low) == pytest.approx(matched)


def test_score_unlabeled_predicts_below_the_scorers_floor():
    from activedet.stages.score_unlabeled import Config

    base = {"checkpoint_uri": "c", "dataset_uri": "d", "ledger_uri": "l", "output_uri": "o"}
    cfg = Config(**base)
    assert cfg.unmatched == "ignore"
    assert 0 < cfg.detector_floor < cfg.score_floor
    assert Config(**base, score_floor=0.2, predict_floor=0.05).detector_floor == 0.05
    with pytest.raises(ValueError, match="below score_floor"):
        Config(**base, predict_floor=0.05)


def test_localization_score_is_one_minus_v_max_over_boxes():
    p = prediction("a", [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [[0.1, 0.9, 0, 0]] * 3,
                   scores=[0.9, 0.9, 0.01])
    p.detections.loc_quality = np.array([0.9, 0.6, 0.05], np.float32)
    assert S.LocalizationScore()(p) == pytest.approx(0.4)  # the third box is below the floor
    assert S.LocalizationScore(aggregation="mean")(p) == pytest.approx(0.25)
    assert "localization" in S.SCORES.names()
    with pytest.raises(ActivedetError, match="box_head: certainty"):
        S.LocalizationScore()(prediction("b", BOX, [[0.1, 0.9, 0, 0]]))


def test_localization_needs_the_certainty_head_at_experiment_load():
    from activedet.pipeline.plan import load_experiment

    base = {"name": "t", "dataset": {"uri": "s3://data/x"}, "initial_size": 10, "budget": 5, "cycles": 2,
            "acquisition": {"score": "localization", "strategy": "topk"}}
    with pytest.raises(ConfigError, match="box_head: certainty"):
        load_experiment(base)
    load_experiment({**base, "training": {"preset_options": {"box_head": "certainty", "intervals": 30}}})


def test_inconsistency_needs_flipped():
    with pytest.raises(ActivedetError, match="flipped"):
        S.InconsistencyScore()(prediction("a", BOX, [[0.1, 0.9, 0, 0]]))


def test_mutual_information():
    agree = np.tile(np.array([[[0.1, 0.6, 0.2, 0.1]]]), (5, 1, 1))
    p = prediction("a", BOX, agree[0], mc_probs=agree)
    assert S.MCDropoutScore()(p) == pytest.approx(0.0, abs=1e-6)
    # passes disagree (each confident, different classes): high MI even though each is sharp
    disagree = np.array([[[0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]]] * 2)
    p2 = prediction("b", BOX, disagree.mean(0), mc_probs=disagree)
    assert S.MCDropoutScore()(p2) == pytest.approx(np.log(2), rel=1e-3)
    with pytest.raises(ActivedetError, match="mc_probs"):
        S.MCDropoutScore()(prediction("c", BOX, agree[0], mc_probs=np.ones((5, 3, 4)) / 4))


def test_registry_lists_valid_scores():
    assert {"entropy", "inconsistency", "mc_dropout"} <= set(S.SCORES.names())
    with pytest.raises(ConfigError, match="valid: entropy"):
        S.build_scorers(["entropyy"])


def test_greedy_match_is_one_to_one():
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(S.greedy_match(iou, 0.5)) == [(0, 0)]
    assert sorted(S.greedy_match(np.array([[0.9, 0.8], [0.85, 0.6]]), 0.5)) == [(0, 0), (1, 1)]
