"""Certainty-aware box head (Li et al.): interval targets, decoding, v, losses, presets, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from activedet import store
from activedet.errors import ActivedetError, ConfigError
from activedet.models import certainty_head as ch
from activedet.models.checkpoint import (
    CheckpointError,
    detector_for_dataset,
    load_detector,
    load_weights,
    upload_checkpoint,
)
from activedet.models.presets import build_model

PROPOSAL = torch.tensor([[0.0, 0.0, 40.0, 20.0]])  # w 40, h 20


def test_interval_targets_on_a_hand_computed_box():
    # K = 4, span 1: each side's segment is the side +- half the box extent, 4 intervals:
    #   x1: [-20, 20] step 10 | y1: [-10, 10] step 5 | x2: [20, 60] step 10 | y2: [10, 30] step 5
    gt = torch.tensor([[3.0, -4.0, 47.0, 30.0]])
    idx, off = ch.interval_targets(PROPOSAL, gt, 4)
    # x1 = 3 -> 2.3 intervals in: interval 2 (centre 5), offset -0.2; y1 = -4 -> 1.2: interval 1,
    # -0.3; x2 = 47 -> 2.7: interval 2, +0.2; y2 = 30 is the segment's end -> last interval, +0.5
    assert idx.tolist() == [[2, 1, 2, 3]]
    torch.testing.assert_close(off, torch.tensor([[-0.2, -0.3, 0.2, 0.5]]))
    # beyond the segment: the end interval, the refinement covers the rest
    idx, off = ch.interval_targets(PROPOSAL, torch.tensor([[-35.0, 0.0, 40.0, 20.0]]), 4)
    assert idx[0, 0] == 0 and off[0, 0].item() == pytest.approx(-2.0)
    # 30 intervals: x1 = 3 -> 23/40*30 = 17.25 intervals in
    idx, off = ch.interval_targets(PROPOSAL, gt, 30)
    assert idx[0, 0] == 17 and off[0, 0].item() == pytest.approx(-0.25)


def _peaked_logits(idx: torch.Tensor, k: int, peak: torch.Tensor) -> torch.Tensor:
    logits = torch.full((*idx.shape, k), -40.0)
    return logits.scatter(-1, idx.unsqueeze(-1), peak.reshape(*idx.shape, 1))


def test_decoding_round_trips_targets_and_v_is_mean_max_sigmoid():
    gt = torch.tensor([[3.0, -4.0, 47.0, 30.0]])
    for k in (4, 30):
        idx, off = ch.interval_targets(PROPOSAL, gt, k)
        peak = torch.tensor([0.0, math.log(3), 20.0, -20.0])  # sigmoid: 0.5, 0.75, ~1, ~0
        logits = _peaked_logits(idx, k, peak)
        offsets = torch.zeros(1, 4, k).scatter(-1, idx.unsqueeze(-1), off.unsqueeze(-1))
        boxes, v = ch.decode_sides(PROPOSAL, logits, offsets)
        torch.testing.assert_close(boxes, gt)
        # v uses the probability (METHODS.md), not the raw logit Li eq. 4 prints
        assert v.item() == pytest.approx((0.5 + 0.75 + 1.0 + 0.0) / 4, abs=1e-6)
    # zero offsets decode to the chosen interval's centre: x1 interval 2 of [-20, 20] -> 5
    boxes, _ = ch.decode_sides(PROPOSAL, _peaked_logits(torch.tensor([[2, 1, 2, 3]]), 4, torch.zeros(4)), torch.zeros(1, 4, 4))
    torch.testing.assert_close(boxes, torch.tensor([[5.0, -2.5, 45.0, 27.5]]))


def test_v_stays_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 4, 30, generator=g) * 50  # saturating both ways
    v = ch.localization_quality(logits)
    assert v.shape == (200,) and (v >= 0).all() and (v <= 1).all()
    assert ch.localization_quality(torch.full((1, 4, 30), -1e4)).item() == 0.0
    assert ch.localization_quality(torch.full((1, 4, 30), 1e4)).item() == 1.0


def _loss_inputs(n=12, c1=4, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c1, generator=g),
        torch.randn(n, 4, k, generator=g),
        torch.randn(n, 4, k, generator=g),
        torch.tensor([1, 2, 3, 0] * (n // 4)),
        torch.randint(0, k, (n, 4), generator=g),
        torch.rand(n, 4, generator=g) - 0.5,
    )


def test_losses_follow_box_weights_and_regress_mask():
    cls_logits, logits, offsets, labels, idx, off = _loss_inputs()
    n = len(labels)
    ones, yes = torch.ones(n), torch.ones(n, dtype=torch.bool)

    def loss(w=ones, r=yes):
        return ch.certainty_losses(cls_logits, logits, offsets, labels, idx, off, w, r)

    base = loss()
    assert base[1] > 0 and base[2] > 0
    # weight 0 on class-2 boxes removes exactly their terms; weights act linearly on every loss
    w = lambda x: torch.where(labels == 2, torch.tensor(x), torch.tensor(1.0))  # noqa: E731
    zero, three = loss(w(0.0)), loss(w(3.0))
    for a, b, c in zip(zero, base, three, strict=True):
        torch.testing.assert_close(c - a, 3 * (b - a))
    # uncertain boxes (regress False): no interval and no refinement loss, classification unchanged
    no_reg = loss(r=torch.zeros(n, dtype=torch.bool))
    assert no_reg[1] == 0 and no_reg[2] == 0
    torch.testing.assert_close(no_reg[0], base[0])
    # the interval loss is the binary cross-entropy of eq. 3 summed over sides and intervals
    pos = labels > 0
    y = torch.nn.functional.one_hot(idx, 8).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[pos], y[pos], reduction="sum") / n
    torch.testing.assert_close(base[1], bce)


def test_model_losses_and_weights_through_the_tiny_preset():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=3, train_dropout=False, box_head="certainty", intervals=4).train()
    images = [torch.rand(3, 64, 128) for _ in range(2)]
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 15.0, 100.0, 55.0]])

    def losses(**extra):
        torch.manual_seed(1)
        return model(images, [{"boxes": boxes, "labels": torch.tensor([1, 2]), **extra} for _ in images])

    base = losses()
    assert {"loss_classifier", "loss_box_interval", "loss_box_refine", "loss_objectness"} <= set(base)
    assert "loss_box_reg" not in base and base["loss_box_interval"] > 0
    no_reg = losses(regress=torch.zeros(2, dtype=torch.bool))
    assert no_reg["loss_box_interval"] == 0 and no_reg["loss_box_refine"] == 0
    w0, w2 = losses(weights=torch.tensor([1.0, 0.0])), losses(weights=torch.tensor([1.0, 2.0]))
    for k in ("loss_box_interval", "loss_box_refine"):
        torch.testing.assert_close(w2[k] - w0[k], 2 * (base[k] - w0[k]))


@pytest.mark.parametrize("preset", ["tiny", "lite0_fpn", "mobilenet_v3_fpn", "resnet50_fpn"])
def test_every_preset_takes_the_certainty_head(preset):
    model = build_model(preset, num_classes=3, box_head="certainty", intervals=30)
    assert isinstance(model.roi_heads, ch.CertaintyRoIHeads)
    assert model.roi_heads.box_predictor.side_logits.out_features == 120
    assert ch.head_spec(model) == {"type": "certainty", "intervals": 30, "segment_span": 1.0}
    assert ch.head_spec(build_model("tiny", num_classes=3)) == {"type": "standard"}


def test_bad_head_options_are_config_errors():
    with pytest.raises(ConfigError, match="valid: standard, certainty"):
        build_model("tiny", num_classes=3, box_head="sabl")
    with pytest.raises(ConfigError, match="intervals"):
        build_model("tiny", num_classes=3, box_head="certainty", intervals=1)
    with pytest.raises(ConfigError, match="only used by box_head: certainty"):
        build_model("tiny", num_classes=3, intervals=30)
    from activedet.stages.train_teacher import check_preset

    check_preset("lite0_fpn", {"box_head": "certainty", "intervals": 30})
    with pytest.raises(ConfigError, match="intervals"):
        check_preset("tiny", {"box_head": "certainty", "intervals": "many"})


def test_predictions_carry_loc_quality(synth):
    from activedet.models.predict import Predictor, predictions_to_boxes_table

    torch.manual_seed(0)
    det = detector_for_dataset("tiny", synth, box_head="certainty", intervals=30)
    ids = synth.split_ids("val")[:2]
    preds = list(Predictor(det, score_floor=0.0, max_dets=20).predict(synth, ids, flip_tta=True))
    for p in preds:
        for d in (p.detections, p.flipped):
            assert d.loc_quality is not None and d.loc_quality.shape == (len(d),)
            assert ((d.loc_quality >= 0) & (d.loc_quality <= 1)).all()
    table = predictions_to_boxes_table(preds, synth)
    q = np.asarray(table.column("loc_quality").to_pylist(), float)
    assert table.num_rows > 0 and np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()
    # the standard head: the column is there, null
    std = detector_for_dataset("tiny", synth)
    table = predictions_to_boxes_table(Predictor(std, score_floor=0.0, max_dets=5).predict(synth, ids), synth)
    assert table.num_rows > 0 and table.column("loc_quality").null_count == table.num_rows


def test_quality_nms_ranks_by_score_times_v():
    rh = build_model("tiny", num_classes=2, box_head="certainty", intervals=4).roi_heads
    rh.score_thresh, rh.nms_thresh, rh.detections_per_img = 0.0, 0.5, 10
    # two overlapping proposals of class 1: the first scores higher, the second is better localized
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 0.0, 21.0, 20.0]]).unsqueeze(1).expand(-1, 3, 4)
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    quality = torch.tensor([0.3, 0.9])
    out = rh._postprocess_one(boxes, probs, (64, 64), quality=quality)
    first = out["boxes"][out["labels"] == 1][0]
    torch.testing.assert_close(first, boxes[1, 0])
    assert out["loc_quality"][out["labels"] == 1][0].item() == pytest.approx(0.9)
    rh.quality_nms = False
    out = rh._postprocess_one(boxes, probs, (64, 64), quality=quality)
    torch.testing.assert_close(out["boxes"][out["labels"] == 1][0], boxes[0, 0])


def test_checkpoint_records_head_and_refuses_the_other_head(synth, tmp_path):
    torch.manual_seed(0)
    cert = detector_for_dataset("tiny", synth, box_head="certainty", intervals=4)
    uri = upload_checkpoint(cert, str(tmp_path / "cert"))
    meta = json.loads((store.local_path(uri) / "meta.json").read_text())
    assert meta["box_head"] == {"type": "certainty", "intervals": 4, "segment_span": 1.0}
    back = load_detector(uri, dataset=synth)
    assert ch.head_spec(back.model)["intervals"] == 4
    for k, v in cert.model.state_dict().items():
        torch.testing.assert_close(v, back.model.state_dict()[k])
    std_uri = upload_checkpoint(detector_for_dataset("tiny", synth), str(tmp_path / "std"))
    for target, source in ((detector_for_dataset("tiny", synth), uri), (cert, std_uri),
                           (detector_for_dataset("tiny", synth, box_head="certainty", intervals=30), uri)):
        with pytest.raises(CheckpointError, match="box head") as err:
            load_weights(target, source)
        assert "\n" not in str(err.value) and isinstance(err.value, ActivedetError)
    # warm start (init_checkpoint) with the same classes: refused the same way
    from activedet.models.init import load_init_checkpoint

    with pytest.raises(CheckpointError, match="box head"):
        load_init_checkpoint(detector_for_dataset("tiny", synth), uri)


def test_trains_resumes_and_predicts(synth, tmp_path):
    """A few iterations on 64x128 inputs, a resume checkpoint restored into a fresh detector."""
    from activedet.models.data import DetectionDataset, endless_batches
    from activedet.models.predict import Predictor
    from activedet.models.train import ResumeCheckpointer, Trainer, seed_everything

    seed_everything(0)
    opts = {"box_head": "certainty", "intervals": 30, "min_size": 64, "max_size": 128, "train_dropout": False}
    det = detector_for_dataset("tiny", synth, **opts)
    data = DetectionDataset(synth, synth.split_ids("train")[:4], category_ids=det.category_ids, train=False)
    root = str(tmp_path / "out")
    saved = {}

    class Snapshot:
        def after_step(self, trainer, iteration, losses):
            if iteration == 2:
                saved.update({k: v.detach().clone() for k, v in det.model.state_dict().items()})

    resume = ResumeCheckpointer(root, det, every=2, fingerprint="f")
    trainer = Trainer(det.model, endless_batches(data, batch_size=2, seed=0), iterations=3, warmup_iters=1,
                      lr=0.005, hooks=[Snapshot(), resume])
    result = trainer.train()
    assert math.isfinite(result.final_loss)
    assert {"loss_box_interval", "loss_box_refine"} <= set(trainer.last_losses)

    fresh = detector_for_dataset("tiny", synth, **opts)
    it, optim = ResumeCheckpointer(root, fresh, every=2, fingerprint="f").restore()
    assert it == 2 and optim
    for k, v in saved.items():
        torch.testing.assert_close(fresh.model.state_dict()[k], v)
    more = Trainer(fresh.model, endless_batches(data, batch_size=2, seed=0, start_iter=2), iterations=3,
                   warmup_iters=1, lr=0.005, start_iter=2)
    more.load_optimizer_state(optim)
    assert more.train().iterations == 3
    pred = next(iter(Predictor(fresh, score_floor=0.0, max_dets=10).predict(synth, synth.split_ids("val")[:1])))
    assert pred.detections.loc_quality is not None and len(pred.detections) > 0
