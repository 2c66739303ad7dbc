"""Per-box loss weights and the regression mask of WeightedRoIHeads."""

import torch
from torchvision.models.detection.roi_heads import fastrcnn_loss

from activedet.models.presets import build_model
from activedet.models.roi_heads import weighted_fastrcnn_loss


def _random_head_outputs(k=40, c1=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, c1, generator=g)
    reg = torch.randn(k, 4 * c1, generator=g)
    labels = torch.randint(0, c1, (k,), generator=g)
    targets = torch.randn(k, 4, generator=g)
    return logits, reg, labels, targets


def test_unit_weights_equal_torchvision_loss():
    logits, reg, labels, targets = _random_head_outputs()
    ours = weighted_fastrcnn_loss(logits, reg, labels, targets, torch.ones(len(labels)), torch.ones(len(labels), dtype=torch.bool))
    ref = fastrcnn_loss(logits, reg, [labels], [targets])
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])


def test_weighting_one_class_changes_only_its_contribution():
    logits, reg, labels, targets = _random_head_outputs()
    regress = torch.ones(len(labels), dtype=torch.bool)

    def loss(w2):
        w = torch.where(labels == 2, torch.tensor(w2), torch.tensor(1.0))
        return weighted_fastrcnn_loss(logits, reg, labels, targets, w, regress)

    zero, one, three = loss(0.0), loss(1.0), loss(3.0)
    # without class 2 the loss equals the loss over the other proposals only
    keep = labels != 2
    cls_others = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum") / len(labels)
    torch.testing.assert_close(zero[0], cls_others)
    for a, b, c in zip(zero, one, three, strict=False):
        torch.testing.assert_close(c - a, 3 * (b - a))  # linear in the class weight
        assert b > a


def test_regress_false_zeroes_box_regression_only():
    logits, reg, labels, targets = _random_head_outputs()
    w = torch.ones(len(labels))
    full = weighted_fastrcnn_loss(logits, reg, labels, targets, w, torch.ones(len(labels), dtype=torch.bool))
    none = weighted_fastrcnn_loss(logits, reg, labels, targets, w, torch.zeros(len(labels), dtype=torch.bool))
    assert full[1] > 0 and none[1] == 0
    torch.testing.assert_close(none[0], full[0])


def _model_losses(model, images, targets):
    torch.manual_seed(123)  # same proposal sampling and dropout masks in every call
    return model(images, targets)


def test_target_weights_and_regress_flow_through_the_model():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=3, train_dropout=False).train()
    images = [torch.rand(3, 128, 256) for _ in range(2)]
    boxes = torch.tensor([[10.0, 20.0, 60.0, 70.0], [100.0, 30.0, 160.0, 100.0]])
    labels = torch.tensor([1, 2])

    def targets(**extra):
        return [{"boxes": boxes.clone(), "labels": labels.clone(), **extra} for _ in images]

    base = _model_losses(model, images, targets())
    ones = _model_losses(model, images, targets(weights=torch.ones(2), regress=torch.ones(2, dtype=torch.bool)))
    for k in base:
        torch.testing.assert_close(base[k], ones[k])
    w0 = _model_losses(model, images, targets(weights=torch.tensor([1.0, 0.0])))
    w2 = _model_losses(model, images, targets(weights=torch.tensor([1.0, 2.0])))
    for k in ("loss_classifier", "loss_box_reg"):
        torch.testing.assert_close(w2[k] - w0[k], 2 * (base[k] - w0[k]))
    # RPN objectness is not weighted; a zero-weighted box gives no RPN box regression (issue 15)
    torch.testing.assert_close(w0["loss_objectness"], base["loss_objectness"])
    torch.testing.assert_close(w2["loss_rpn_box_reg"], base["loss_rpn_box_reg"])
    assert 0 < w0["loss_rpn_box_reg"] < base["loss_rpn_box_reg"]
    no_reg = _model_losses(model, images, targets(regress=torch.zeros(2, dtype=torch.bool)))
    assert base["loss_box_reg"] > 0 and no_reg["loss_box_reg"] == 0
    assert base["loss_rpn_box_reg"] > 0 and no_reg["loss_rpn_box_reg"] == 0
    torch.testing.assert_close(no_reg["loss_classifier"], base["loss_classifier"])
    torch.testing.assert_close(no_reg["loss_objectness"], base["loss_objectness"])


def test_masked_rpn_equals_torchvision_without_masks():
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from activedet.models.rpn import MaskedRPN

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=3, train_dropout=False).train()
    assert type(model.rpn) is MaskedRPN
    images = [torch.rand(3, 128, 256)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1])}]
    ours = _model_losses(model, images, targets)
    model.rpn.__class__ = RegionProposalNetwork
    ref = _model_losses(model, images, targets)
    for k in ("loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(ours[k], ref[k])
