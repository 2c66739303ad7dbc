"""Student SSL: loss composition, per-class weights, uncertain boxes, the stage end to end."""

from __future__ import annotations

import pytest
import torch

from activedet import store
from activedet.config import load_config
from activedet.models.checkpoint import build_detector
from activedet.ssl.student import ssl_loss
from activedet.stages import train_student_ssl as stage


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_detector("tiny", category_ids=[1, 2], class_names=["a", "b"], dropout_p=0.0).model
    m.train()
    return m


def batch(weights=(1.0, 1.0), regress=(True, True), pseudo=True):
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 128, 256, generator=g)
    target = {
        "boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0], [120.0, 30.0, 200.0, 110.0]]),
        "labels": torch.tensor([1, 2]),
        "weights": torch.tensor(weights),
        "regress": torch.tensor(regress),
        "pseudo": pseudo,
    }
    return [img], [target]


def losses(model, lambda_u=1.0, **kw):
    torch.manual_seed(123)  # same proposal sampling every call
    images, targets = batch(**kw)
    with torch.no_grad():
        return {k: float(v) for k, v in ssl_loss(lambda_u)(model, images, targets).items()}


def test_per_class_weight_changes_only_that_class_terms(model):
    base = losses(model)
    a3 = losses(model, weights=(3.0, 1.0))
    b3 = losses(model, weights=(1.0, 3.0))
    both = losses(model, weights=(3.0, 3.0))
    a0 = losses(model, weights=(0.0, 1.0))
    for key in ("unsup/loss_classifier", "unsup/loss_box_reg"):
        da, db = a3[key] - base[key], b3[key] - base[key]
        assert da > 0 and db > 0
        # contributions are separable: weighting a and b together adds both changes
        assert both[key] - base[key] == pytest.approx(da + db, rel=1e-4)
        # class a's contribution at weight 1 is half the change from 1 to 3, and weight 0 removes it
        assert base[key] - a0[key] == pytest.approx(da / 2, rel=1e-4)
    # the RPN is not weighted per class
    assert a3["unsup/loss_objectness"] == pytest.approx(base["unsup/loss_objectness"])


def test_uncertain_boxes_give_no_box_regression(model):
    assert losses(model, regress=(False, False))["unsup/loss_box_reg"] == 0.0
    some = losses(model, regress=(True, False))
    assert 0 < some["unsup/loss_box_reg"] < losses(model)["unsup/loss_box_reg"]
    assert losses(model, regress=(False, False))["unsup/loss_classifier"] == pytest.approx(losses(model)["unsup/loss_classifier"])


def test_uncertain_and_zero_weighted_boxes_give_no_rpn_box_regression(model):
    # issue 15: the docs said "classification only", but the RPN still regressed uncertain boxes
    full = losses(model)
    assert full["unsup/loss_rpn_box_reg"] > 0
    assert losses(model, regress=(False, False))["unsup/loss_rpn_box_reg"] == 0.0
    assert losses(model, weights=(0.0, 0.0))["unsup/loss_rpn_box_reg"] == 0.0
    one = losses(model, regress=(True, False))["unsup/loss_rpn_box_reg"]
    zero_b = losses(model, weights=(1.0, 0.0))["unsup/loss_rpn_box_reg"]
    assert 0 < one < full["unsup/loss_rpn_box_reg"] and zero_b == pytest.approx(one)
    # objectness (classification) is unchanged: uncertain boxes are still RPN positives
    assert losses(model, regress=(False, False))["unsup/loss_objectness"] == pytest.approx(full["unsup/loss_objectness"])


def test_lambda_u_scales_the_unsupervised_part_only(model):
    sup = losses(model, pseudo=False)
    assert set(sup) == {"sup/loss_classifier", "sup/loss_box_reg", "sup/loss_objectness", "sup/loss_rpn_box_reg"}
    u1, u2 = losses(model), losses(model, lambda_u=0.5)
    assert all(k.startswith("unsup/") for k in u1)
    for k in u1:
        assert u2[k] == pytest.approx(0.5 * u1[k], rel=1e-5)
    assert losses(model, lambda_u=0.0) == {}


def test_stage_trains_from_the_teacher_and_writes_a_student(ssl_setup, tmp_path):
    from activedet.models.checkpoint import load_detector, read_checkpoint_meta
    from activedet.stages import generate_pseudo_labels as gen

    ds, ledger, teacher, labeled, pool = ssl_setup
    pl = str(tmp_path / "pl")
    gen.run(load_config(gen.Config, {
        "teacher_checkpoint_uri": teacher, "dataset_uri": ds, "ledger_uri": ledger, "output_uri": pl,
        "filter": "dynamic", "filter_params": {"tau": 0.2}, "min_score": 0.15, "max_pool_images": 8, "device": "cpu",
    }))
    cfg = load_config(stage.Config, {
        "teacher_checkpoint_uri": teacher, "dataset_uri": ds, "ledger_uri": ledger, "pseudo_labels_uri": pl,
        "output_uri": str(tmp_path / "student"), "iterations": 4, "batch_size": 4, "checkpoint_every": 2,
        "warmup_iters": 0, "lr": 0.005, "device": "cpu",
    })
    res = stage.run(cfg)
    assert res["pseudo_images"] == 8 and res["labeled_images"] == len(labeled)
    meta = read_checkpoint_meta(cfg.output_uri)
    assert meta["init_checkpoint_uri"] == teacher
    assert meta["training"]["class_weights"]  # dynamic filter's alpha_m reached the student
    assert any(k.startswith("unsup/") for k in meta["training"]["final_losses"])
    student = load_detector(cfg.output_uri)
    t = load_detector(teacher)
    changed = [k for k, v in student.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, t.model.state_dict()[k])]
    assert changed  # trained, starting from the teacher
    assert store.is_committed(cfg.output_uri)


def test_student_pool_background_and_uncertain_settings():
    from activedet import schema
    from activedet.ssl.student import student_pool

    pseudo = schema.boxes_from_arrays(
        ["a", "a", "b"], [[0, 0, 5, 5]] * 3, [1, 2, 1], [0.9, 0.5, 0.4], source="pseudo",
        extra={"reliable": [True, False, False]},
    )
    boxes, ids = student_pool(pseudo, ["a", "b", "c"])
    assert ids == ["a", "b", "c"] and boxes.num_rows == 3
    boxes, ids = student_pool(pseudo, ["a", "b", "c"], empty_as_background=False)
    assert ids == ["a", "b"]
    boxes, ids = student_pool(pseudo, ["a", "b", "c"], uncertain_boxes="ignore", empty_as_background=False)
    assert ids == ["a"] and boxes.column("score").to_pylist() == [pytest.approx(0.9)]
    # "b" lost its only (uncertain) box: with empty_as_background it stays, as background
    assert student_pool(pseudo, ["a", "b", "c"], uncertain_boxes="ignore")[1] == ["a", "b", "c"]
