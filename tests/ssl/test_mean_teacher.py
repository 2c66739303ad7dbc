"""mode mean_teacher (LabelMatch): EMA, online ACT, pseudo boxes, proposal self-assignment, the stage with resume."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from activedet import store
from activedet.config import load_config
from activedet.models.checkpoint import build_detector, upload_checkpoint
from activedet.ssl import mean_teacher as mt
from activedet.stages import train_student_ssl as stage

# ----------------------------------------------------------------------------- EMA


def test_ema_update_math():
    teacher, student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), torch.nn.Sequential(
        torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    for p in teacher.parameters():
        torch.nn.init.constant_(p, 1.0)
    for p in student.parameters():
        torch.nn.init.constant_(p, 3.0)
    student[1].running_mean.fill_(5.0)
    student[1].num_batches_tracked.fill_(7)
    mt.ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher[0].weight, torch.full((2, 2), 0.9 * 1 + 0.1 * 3))
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), 0.9 * 0 + 0.1 * 5))
    assert int(teacher[1].num_batches_tracked) == 7  # integer buffers are copied
    mt.ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher[0].bias, torch.full((2,), 0.9 * 1.2 + 0.1 * 3))
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in student.parameters())  # the student is untouched


def test_default_ema_decay_scales_the_paper_setting_to_the_schedule():
    assert mt.ema_decay_for(180_000) == pytest.approx(0.9996)
    assert mt.ema_decay_for(2_000_000) == pytest.approx(0.9996)  # capped at the paper's
    assert mt.ema_decay_for(20_000) == pytest.approx(0.9996**9)
    assert mt.ema_decay_for(600) == 0.9 and mt.ema_decay_for(10) == 0.9  # floor


# ----------------------------------------------------------------------------- ACT


def test_act_thresholds_against_a_hand_computation():
    # N_l = 4 labeled images with 2 / 1 / 0 boxes of classes 1 / 2 / 3; N_u = 10 estimation images
    scores = {1: np.array([0.5, 0.9, 0.7, 0.6, 0.8, 0.3]), 2: np.array([0.4, 0.95]), 3: np.array([0.99])}
    t, tr, e = mt.act_thresholds(scores, {1: 2, 2: 1, 3: 0}, num_labeled=4, num_unlabeled=10, alpha=20)
    # class 1: e = 2 * 10 / 4 = 5 -> 5th highest score 0.5; 20% of 5 = 1 -> the highest, 0.9
    assert e[1] == 5 and t[1] == 0.5 and tr[1] == 0.9
    # class 2: e = 2.5 -> rank 3 (half up) but only 2 detections -> the last, 0.4; 20% of 2.5 = 0.5 -> rank 1
    assert t[2] == 0.4 and tr[2] == 0.95
    # class 3: never labeled -> expected 0 times -> keeps nothing
    assert t[3] is None and tr[3] is None
    with pytest.raises(Exception, match="labeled images"):
        mt.act_thresholds(scores, {1: 1}, num_labeled=0, num_unlabeled=10, alpha=20)


def test_act_subset_is_seeded():
    pool = [f"i{k:03d}" for k in range(50)]
    a, b, c = mt.act_subset(pool, 10, 3), mt.act_subset(pool, 10, 3), mt.act_subset(pool, 10, 4)
    assert a == b and a != c and len(a) == 10 and set(a) <= set(pool)
    assert mt.act_subset(pool[:5], 10, 3) == pool[:5]


def test_act_state_round_trips_json():
    s = mt.ACTState({1: 0.5, 2: None}, {1: 0.9, 2: None}, refreshed_at=40, estimation_images=12, expected={1: 5.0, 2: 0.0})
    assert mt.ACTState.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_select_pseudo_boxes_thresholds_and_rplm():
    act = mt.ACTState({1: 0.5, 2: 0.3}, {1: 0.9, 2: None})
    det = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 30, 10, 40]]),
        "labels": torch.tensor([1, 1, 2, 1]), "scores": torch.tensor([0.95, 0.6, 0.35, 0.4]),
    }
    p = mt.select_pseudo_boxes(det, act, 2, rplm=False)
    assert p["scores"].tolist() == pytest.approx([0.95, 0.6, 0.35])  # 0.4 < t_1 = 0.5 is dropped
    assert p["regress"].tolist() == [True, False, False] and p["soft"].tolist() == [False, True, True]
    # RPLM: the second box's pre-NMS cluster is tight (mean score 0.85, IoU >= 0.8) -> promoted
    det |= {"pre_boxes": torch.tensor([[20.0, 20, 30, 30], [20, 20, 30, 31], [21, 20, 30, 30], [40, 40, 50, 50], [40, 40, 60, 60]]),
            "pre_scores": torch.tensor([0.6, 0.9, 0.8, 0.35, 0.9]), "merged_into": torch.tensor([1, 1, 1, 2, 2])}
    p = mt.select_pseudo_boxes(det, act, 2, rplm=True)
    assert p["regress"].tolist() == [True, True, False] and int(p["promoted"]) == 1


# ----------------------------------------------------------------------------- student losses


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = build_detector("tiny", category_ids=[1, 2], class_names=["a", "b"], dropout_p=0.0, min_size=64, max_size=128).model
    torch.manual_seed(1)
    teacher = build_detector("tiny", category_ids=[1, 2], class_names=["a", "b"], dropout_p=0.0, min_size=64, max_size=128).model
    teacher.eval().roi_heads.keep_pre_nms = True
    return student.train(), teacher


def _features(model, images):
    il = mt._image_list(model, images)
    return model.backbone(il.tensors), il


def test_soft_targets_are_the_teachers_distribution_on_the_students_proposals(pair):
    student, teacher = pair
    image = torch.rand(3, 64, 128, generator=torch.Generator().manual_seed(2))
    feats_s, il = _features(student, [image])
    with torch.no_grad():
        feats_t, _ = _features(teacher, [image])
    # one reliable box (class 1) and one uncertain box (class 2); the student's own proposals around both
    target = {"boxes": torch.tensor([[5.0, 5, 40, 40], [70, 10, 120, 60]]), "labels": torch.tensor([1, 2]),
              "regress": torch.tensor([True, False]), "soft": torch.tensor([False, True]), "weights": torch.ones(2)}
    jitter = torch.tensor([[0.0, 0, 0, 0], [2, 1, -1, 2], [-2, 2, 3, -1], [4, -3, 2, 2]])
    proposals = [torch.cat([target["boxes"][0] + jitter, target["boxes"][1] + jitter, torch.tensor([[0.0, 50, 20, 63]])])]
    torch.manual_seed(5)
    samples = mt.sample_rois(student.roi_heads, proposals, [target])
    props = samples.proposals[0]
    fg = samples.labels > 0
    assert samples.soft.any() and (fg & ~samples.soft).any()
    assert not samples.regress[samples.soft].any()  # uncertain: never box-regressed
    soft = mt.soft_targets(teacher.roi_heads, feats_t, samples, il.image_sizes)
    # the teacher's box head on exactly those proposals, full C + 1 distribution, one per proposal
    with torch.no_grad():
        ref = teacher.roi_heads.class_probs_for(feats_t, [props[samples.soft]], il.image_sizes)
    torch.testing.assert_close(soft, ref)
    assert soft.shape == (int(samples.soft.sum()), 3)
    torch.testing.assert_close(soft.sum(-1), torch.ones(len(soft)))
    assert not torch.allclose(soft, soft[:1].expand_as(soft))  # proposals of one object get different targets
    # the loss: hard CE (+ regression) elsewhere, soft CE against the teacher on those, / K
    losses = mt.roi_losses(student.roi_heads, feats_s, il.image_sizes, samples, soft)
    logits, _ = student.roi_heads.box_predictor(student.roi_heads.box_head(student.roi_heads.box_roi_pool(feats_s, samples.proposals, il.image_sizes)))
    hard = F.cross_entropy(logits[~samples.soft], samples.labels[~samples.soft], reduction="sum")
    soft_ce = -(soft * F.log_softmax(logits[samples.soft], -1)).sum()
    torch.testing.assert_close(losses["loss_classifier"], (hard + soft_ce) / len(samples.labels))
    # and it follows the teacher: another teacher distribution, another loss
    other = torch.full_like(soft, 1 / 3)
    assert not torch.isclose(mt.roi_losses(student.roi_heads, feats_s, il.image_sizes, samples, other)["loss_classifier"],
                             losses["loss_classifier"])


def _act(threshold, reliable):
    return mt.ACTState({1: threshold, 2: threshold}, {1: reliable, 2: reliable})


def test_uncertain_boxes_give_no_regression_loss_in_rpn_and_roi_head(pair):
    student, teacher = pair
    g = torch.Generator().manual_seed(3)
    weak = [torch.rand(3, 64, 128, generator=g) for _ in range(2)]
    strong = [w.flip(0) for w in weak]  # any photometric change

    def run(act):
        torch.manual_seed(11)
        return mt.unsupervised_losses(student, teacher, strong, weak, act, 2, rplm=False)

    uncertain, pseudo, _ = run(_act(0.0, None))  # keep every detection, none reliable
    assert sum(len(p["labels"]) for p in pseudo) > 0 and not any(p["regress"].any() for p in pseudo)
    assert uncertain["loss_box_reg"] == 0 and uncertain["loss_rpn_box_reg"] == 0
    assert uncertain["loss_classifier"] > 0 and uncertain["loss_objectness"] > 0
    reliable, pseudo, _ = run(_act(0.0, 0.0))  # the same boxes, all reliable
    assert all(p["regress"].all() for p in pseudo)
    assert reliable["loss_box_reg"] > 0 and reliable["loss_rpn_box_reg"] > 0
    # no gradient reaches the box-regression layers from uncertain boxes
    student.zero_grad()
    sum(v for v in run(_act(0.0, None))[0].values()).backward()
    assert float(student.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum()) == 0.0
    assert float(student.rpn.head.bbox_pred.weight.grad.abs().sum()) == 0.0
    student.zero_grad()


def test_certainty_head_gets_soft_targets_and_no_localization_loss_from_uncertain_boxes():
    def make(seed):
        torch.manual_seed(seed)
        return build_detector("tiny", category_ids=[1, 2], class_names=["a", "b"], dropout_p=0.0, min_size=64, max_size=128,
                              box_head="certainty", intervals=4).model

    student, teacher = make(0).train(), make(1).eval()
    teacher.roi_heads.keep_pre_nms = True
    g = torch.Generator().manual_seed(3)
    weak = [torch.rand(3, 64, 128, generator=g) for _ in range(2)]
    strong = [w.flip(0) for w in weak]
    seen = []

    def run(act):
        torch.manual_seed(11)
        return mt.unsupervised_losses(student, teacher, strong, weak, act, 2, rplm=False, observe=seen.append)

    uncertain, pseudo, _ = run(_act(0.0, None))
    assert sum(len(p["labels"]) for p in pseudo) > 0 and not any(p["regress"].any() for p in pseudo)
    assert "loc_quality" in seen[0][0]  # the teacher's v reaches the online statistics
    assert uncertain["loss_box_interval"] == 0 and uncertain["loss_box_refine"] == 0 and uncertain["loss_rpn_box_reg"] == 0
    assert uncertain["loss_classifier"] > 0 and "loss_box_reg" not in uncertain
    student.zero_grad()
    sum(run(_act(0.0, None))[0].values()).backward()
    head = student.roi_heads.box_predictor
    assert float(head.side_logits.weight.grad.abs().sum()) == 0 and float(head.side_offsets.weight.grad.abs().sum()) == 0
    assert float(head.cls_score.weight.grad.abs().sum()) > 0
    student.zero_grad()
    reliable, pseudo, _ = run(_act(0.0, 0.0))  # the same boxes, all reliable: full interval + refinement losses
    assert all(p["regress"].all() for p in pseudo)
    assert reliable["loss_box_interval"] > 0 and reliable["loss_box_refine"] > 0
    # the uncertain boxes' proposals learn the teacher's distribution (soft CE), not their hard class
    image = weak[0]
    feats_s, il = _features(student, [image])
    with torch.no_grad():
        feats_t, _ = _features(teacher, [image])
    target = {"boxes": torch.tensor([[70.0, 10, 120, 60]]), "labels": torch.tensor([2]), "regress": torch.tensor([False]),
              "soft": torch.tensor([True]), "weights": torch.ones(1)}
    jitter = torch.tensor([[0.0, 0, 0, 0], [2, 1, -1, 2], [-2, 2, 3, -1]])
    torch.manual_seed(5)
    samples = mt.sample_rois(student.roi_heads, [target["boxes"][0] + jitter], [target])
    soft = mt.soft_targets(teacher.roi_heads, feats_t, samples, il.image_sizes)
    assert samples.soft.any() and soft.shape == (int(samples.soft.sum()), 3)
    losses = mt.roi_losses(student.roi_heads, feats_s, il.image_sizes, samples, soft)
    other = mt.roi_losses(student.roi_heads, feats_s, il.image_sizes, samples, torch.full_like(soft, 1 / 3))
    assert losses["loss_box_interval"] == 0 and not torch.isclose(losses["loss_classifier"], other["loss_classifier"])


def test_batch_stats_precision_recall_against_ground_truth():
    pseudo = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "labels": torch.tensor([1, 2]),
               "scores": torch.tensor([0.9, 0.8]), "regress": torch.tensor([True, False]), "promoted": torch.tensor(0)}]
    # the model's frame is 2x the image: boxes are mapped back before matching
    target = {"weak": torch.zeros(3, 32, 32), "gt_boxes": torch.tensor([[0.0, 0, 5, 5], [10, 10, 20, 20]]),
              "gt_labels": torch.tensor([1, 1]), "has_gt": True}
    s = mt.batch_stats(pseudo, [(64, 64)], [target], 2)
    assert s["pseudo_per_image"] == 2 and s["reliable_share"] == 0.5
    assert s["pseudo_precision"] == 0.5 and s["pseudo_recall"] == 0.5 and s["pseudo_class_kl"] > 0


def _dets(labels, scores, quality=None):
    d = {"labels": torch.tensor(labels), "scores": torch.tensor(scores),
         "boxes": torch.tensor([[0.0, 0, 10, 10]] * len(labels)).reshape(-1, 4)}
    return d | ({"loc_quality": torch.tensor(quality)} if quality is not None else {})


def _dynamic(seed_dets, every=2, **params):
    params = {"tau": 0.7, "gamma1": 0.05, "gamma2": 0.6, "tau_min": 0.4, "tau_max": 0.9} | params
    return mt.DynamicThresholds(lambda it: (mt.class_evidence(seed_dets, 2), 7), 2, params, every)


def test_dynamic_thresholds_accumulate_online_against_a_hand_computation():
    # seed pass (standard head, v = 1): class 1 scores 0.9 + 0.5, class 2 score 0.6
    th = _dynamic([_dets([1, 1], [0.9, 0.5]), _dets([2], [0.6])])
    th.start(0)
    st = th.state
    assert st.sums == pytest.approx({1: 1.4, 2: 0.6}) and st.counts == {1: 2, 2: 1} and st.seed_images == 7
    n_bar = 1.5  # mean candidates per class
    assert st.thresholds[1] == pytest.approx((1.4 / n_bar) ** 0.05 * 0.7) and st.weights[1] == pytest.approx((n_bar / 1.4) ** 0.6)
    assert st.thresholds[2] == pytest.approx((0.6 / n_bar) ** 0.05 * 0.7) and st.weights[2] == pytest.approx((n_bar / 0.6) ** 0.6)
    before = dict(st.thresholds)
    # iteration 1: a class-2 box, score 0.8 with v 0.5 (certainty head) -> c_2 += 0.4; thresholds kept until iteration 2
    th.observe([_dets([2], [0.8], [0.5])])
    th.step(1, 10)
    assert st.sums == pytest.approx({1: 1.4, 2: 1.0}) and st.counts == {1: 2, 2: 2} and st.updates == 1
    assert st.thresholds == before and st.refreshed_at == 0
    th.step(2, 10)  # nothing seen this batch; refresh from the accumulated sums: n_bar = 2
    assert st.refreshed_at == 2 and st.updates == 2
    assert st.thresholds[2] == pytest.approx((1.0 / 2) ** 0.05 * 0.7) and st.weights[1] == pytest.approx((2 / 1.4) ** 0.6)
    # the thresholds and weights apply to the pseudo boxes: tau_m filters, alpha_m weights, every kept box reliable
    p = mt.select_pseudo_boxes(_dets([1, 2, 2], [0.69, 0.68, 0.6]), st, 2, rplm=False)
    assert st.thresholds[1] < 0.69 and 0.6 < st.thresholds[2] < 0.68
    assert p["labels"].tolist() == [1, 2] and p["regress"].all() and not p["soft"].any()
    assert p["weights"].tolist() == pytest.approx([st.weights[1], st.weights[2]])
    assert mt.select_pseudo_boxes(_dets([1], [0.69]), st, 2, class_weights=False)["weights"].tolist() == [1.0]
    assert {"ssl/t_c/a", "ssl/alpha_m/b"} <= set(th.metrics(["a", "b"]))


def test_dynamic_thresholds_change_when_localization_quality_changes():
    dets = [_dets([1, 1, 2], [0.9, 0.8, 0.7])]
    certain, doubtful = _dynamic([{**d, "loc_quality": torch.ones(3)} for d in dets]), _dynamic(
        [{**d, "loc_quality": torch.tensor([0.3, 0.3, 1.0])} for d in dets])
    plain = _dynamic(dets)  # no loc_quality (standard head): v = 1
    for th in (certain, doubtful, plain):
        th.start(0)
    assert plain.state.thresholds == certain.state.thresholds
    # class 1's boxes are poorly localized: lower c_1, a lower threshold and a higher weight than with v = 1
    assert doubtful.state.thresholds[1] < certain.state.thresholds[1] and doubtful.state.weights[1] > certain.state.weights[1]
    assert doubtful.state.sums[1] == pytest.approx(0.3 * 0.9 + 0.3 * 0.8)


@pytest.mark.parametrize("kind", ["act", "dynamic"])
def test_resume_state_round_trip(pair, tmp_path, kind):
    student, teacher = pair

    def thresholds():
        return mt.ACTThresholds(lambda it: _act(0.3, 0.7), 4) if kind == "act" else _dynamic([_dets([1, 2], [0.9, 0.5], [0.5, 0.8])])

    loss = mt.MeanTeacherLoss(mt.copy.deepcopy(teacher), 2, lambda_u=2.0, rplm=True, rplm_score=0.8, rplm_iou=0.8,
                              thresholds=thresholds())
    loss.thresholds.start(0)
    if kind == "dynamic":
        loss.thresholds.observe([_dets([1], [0.7], [0.9])])
        loss.thresholds.step(1, 10)
    mt.ema_update(loss.teacher, student, 0.5)
    saved = mt.MeanTeacherResume(loss).save_files(tmp_path)
    assert set(saved) == {"ema_teacher.safetensors", f"{kind}_state.json"}
    # as ResumeCheckpointer writes them: beside a checkpoint, under its manifest
    upload_checkpoint(build_detector("tiny", category_ids=[1, 2], class_names=["a", "b"]), str(tmp_path / "ck"), extra_files=saved)
    fresh = mt.MeanTeacherLoss(mt.copy.deepcopy(teacher), 2, lambda_u=2.0, rplm=True, rplm_score=0.8, rplm_iou=0.8,
                               thresholds=thresholds())
    extra = mt.MeanTeacherResume(fresh)
    extra.restore(str(tmp_path / "ck"))
    assert fresh.thresholds.state == loss.thresholds.state
    assert all(torch.equal(v, loss.teacher.state_dict()[k]) for k, v in fresh.teacher.state_dict().items())
    extra.reset()
    assert fresh.thresholds.state is None and all(torch.equal(v, teacher.state_dict()[k]) for k, v in fresh.teacher.state_dict().items())


# ----------------------------------------------------------------------------- config


def test_mode_config_defaults_and_errors():
    from activedet.errors import ConfigError

    base = {"teacher_checkpoint_uri": "t", "dataset_uri": "d", "ledger_uri": "l", "pseudo_labels_uri": "p", "output_uri": "o"}
    assert load_config(stage.Config, base).mode == "offline" and load_config(stage.Config, base).lambda_u == 1.0
    online = load_config(stage.Config, {**base, "mode": "mean_teacher"})
    assert online.lambda_u == 2.0 and online.mean_teacher.alpha == 20 and online.mean_teacher.ema_decay is None
    assert load_config(stage.Config, {**base, "mode": "mean_teacher", "lambda_u": 0.5}).lambda_u == 0.5
    with pytest.raises(ConfigError, match="offline.*mean_teacher"):
        load_config(stage.Config, {**base, "mode": "online"})
    assert online.mean_teacher.thresholds == "act" and online.mean_teacher.dynamic.tau == 0.7
    dyn = load_config(stage.Config, {**base, "mode": "mean_teacher", "mean_teacher": {"thresholds": "dynamic", "dynamic": {"gamma1": 0.1}}})
    assert dyn.mean_teacher.thresholds == "dynamic" and dyn.mean_teacher.dynamic.gamma1 == 0.1 and dyn.devices == 1
    with pytest.raises(ConfigError, match="thresholds.*'act' or 'dynamic'"):
        load_config(stage.Config, {**base, "mode": "mean_teacher", "mean_teacher": {"thresholds": "fixed"}})
    with pytest.raises(ConfigError, match="tau_min 0.9 > tau_max 0.5"):
        load_config(stage.Config, {**base, "mean_teacher": {"dynamic": {"tau_min": 0.9, "tau_max": 0.5}}})
    assert load_config(stage.Config, {**base, "mode": "mean_teacher", "devices": 2}).devices == 2  # DDP, like offline


def test_experiment_ssl_mode_reaches_the_stage_and_bad_mode_fails_at_load():
    from pathlib import Path

    import yaml

    from activedet.errors import ConfigError
    from activedet.pipeline.layout import RunLayout
    from activedet.pipeline.plan import load_experiment

    data = yaml.safe_load((Path(__file__).parents[2] / "configs" / "demo.yaml").read_text())
    data["ssl"] = {**data.get("ssl", {}), "enabled": True, "mode": "mean_teacher", "mean_teacher": {"act_every": 7}}
    exp = load_experiment(data)
    cfg = stage.from_experiment(exp, RunLayout("/tmp/run", exp), 0)
    assert cfg.mode == "mean_teacher" and cfg.mean_teacher.act_every == 7 and cfg.lambda_u == 2.0
    data["ssl"]["mode"] = "online"
    with pytest.raises(ConfigError, match=r"ssl\.mode.*'offline' or 'mean_teacher'"):
        load_experiment(data)


# ----------------------------------------------------------------------------- the stage, killed and resumed


SETTINGS = {"iterations": 10, "batch_size": 4, "checkpoint_every": 3, "warmup_iters": 0, "lr": 0.005, "device": "cpu",
            "mode": "mean_teacher", "mean_teacher": {"act_every": 4, "act_images": 6}}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """64x128 SynthDrive, 4 labeled images, an untrained tiny teacher at 64x128."""
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset
    from activedet.data.synth import generate_synthdrive
    from activedet.models.checkpoint import detector_for_dataset, upload_checkpoint

    root = tmp_path_factory.mktemp("mt")
    generate_synthdrive(str(root / "ds"), sequences=6, frames=3, seed=0, height=64, width=128)
    ds = load_dataset(str(root / "ds"))
    train = ds.split_ids("train")
    with store.OutputWriter(str(root / "ledger")) as out:
        write_ledger(out, new_ledger(train, train[:4]), cycle=0, parent=None)
    torch.manual_seed(0)
    teacher = upload_checkpoint(detector_for_dataset("tiny", ds, min_size=64, max_size=128), str(root / "teacher"))
    return {"teacher_checkpoint_uri": teacher, "dataset_uri": str(root / "ds"), "ledger_uri": str(root / "ledger"),
            "pseudo_labels_uri": str(root / "unused")}


def _latest(out):
    path = os.path.join(out, "_resume", "latest.json")
    return json.loads(open(path).read()) if os.path.exists(path) else None


def test_mean_teacher_stage_resumes_after_kill(small, tmp_path, caplog):
    from activedet.models.checkpoint import load_detector, read_checkpoint_meta

    out = str(tmp_path / "student")
    settings = {**small, **SETTINGS, "output_uri": out, "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    script = ("import json, sys; from activedet.config import load_config; from activedet.stages import train_student_ssl as s; "
              "s.run(load_config(s.Config, json.loads(sys.argv[1])))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps({**settings, "mlflow_tracking_uri": None})], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            state = _latest(out)
            if state and state["iteration"] >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not store.is_committed(out)
    state = _latest(out)
    killed_at = state["iteration"]
    assert 3 <= killed_at < SETTINGS["iterations"]
    folder = os.path.join(out, "_resume", state["folder"])
    assert {"ema_teacher.safetensors", "act_state.json", "optim.safetensors"} <= set(os.listdir(folder))
    saved_act = json.loads(open(os.path.join(folder, "act_state.json")).read())
    assert saved_act["refreshed_at"] == 4 * (killed_at // 4)

    with caplog.at_level(logging.INFO, logger="activedet.ssl.mean_teacher"):
        res = stage.run(load_config(stage.Config, settings))
    assert res["resumed_from"] == killed_at and res["published_model"] == "ema_teacher"
    # the ACT state came back from the checkpoint: no new estimate at the resume iteration
    estimated = [int(r.getMessage().split("iteration ")[1].split()[0]) for r in caplog.records if "ACT thresholds at" in r.getMessage()]
    assert estimated == [i for i in (4, 8) if i > killed_at]
    meta = read_checkpoint_meta(out)
    assert meta["published_model"] == "ema_teacher" and meta["ssl_mode"] == "mean_teacher"
    assert meta["training"]["resumed_from"] == killed_at and meta["training"]["final_act"]["refreshed_at"] == 8
    assert meta["training"]["mean_teacher"]["ema_decay_used"] == 0.9
    assert any(k.startswith("unsup/") for k in meta["training"]["final_losses"])
    assert store.is_committed(out) and not os.path.exists(os.path.join(out, "_resume"))
    published = load_detector(out)
    teacher = load_detector(small["teacher_checkpoint_uri"])
    assert any(not torch.equal(v, teacher.model.state_dict()[k]) for k, v in published.model.state_dict().items()
               if v.dtype.is_floating_point)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings["mlflow_tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("activedet-stages").experiment_id])
    history = client.get_metric_history(run.info.run_id, "ssl/pseudo_per_image")
    assert sorted(m.step for m in history) == list(range(killed_at + 1, SETTINGS["iterations"] + 1))  # every iteration
    assert "ssl/pseudo_precision" in run.data.metrics and not math.isnan(run.data.metrics["ssl/pseudo_per_image"])


def test_mean_teacher_stage_trains_the_certainty_head_with_online_dynamic_thresholds(small, tmp_path):
    """The stage used to refuse the certainty head; now its v feeds the online c_m and it trains on pseudo boxes."""
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, read_checkpoint_meta

    torch.manual_seed(0)
    det = detector_for_dataset("tiny", load_dataset(small["dataset_uri"]), min_size=64, max_size=128, box_head="certainty", intervals=4)
    teacher = upload_checkpoint(det, str(tmp_path / "teacher"))
    out = str(tmp_path / "student")
    settings = {**small, "teacher_checkpoint_uri": teacher, "output_uri": out, "iterations": 3, "batch_size": 4,
                "checkpoint_every": 0, "warmup_iters": 0, "lr": 0.005, "device": "cpu", "mode": "mean_teacher",
                "mean_teacher": {"thresholds": "dynamic", "dynamic": {"seed_images": 4, "tau": 0.05, "tau_min": 0.01}}}
    res = stage.run(load_config(stage.Config, settings))
    assert res["thresholds"] == "dynamic"
    meta = read_checkpoint_meta(out)
    assert meta["box_head"]["type"] == "certainty" and meta["published_model"] == "ema_teacher"
    final = meta["training"]["final_dynamic"]
    assert final["updates"] == 3 and final["seed_images"] == 4 and final["refreshed_at"] == 3
    assert sum(final["counts"].values()) > 0 and sum(final["sums"].values()) > 0  # the teacher's candidates were accumulated
    assert {"unsup/loss_box_interval", "unsup/loss_box_refine", "unsup/loss_classifier"} <= set(meta["training"]["final_losses"])
