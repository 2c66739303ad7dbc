import pytest
import torch

from activedet.errors import ConfigError
from activedet.models.presets import PRESETS, build_model
from activedet.models.roi_heads import DropoutTwoMLPHead, MCDropout, WeightedRoIHeads


@pytest.mark.parametrize("preset", ["tiny", "lite0_fpn", "mobilenet_v3_fpn", "resnet50_fpn"])
def test_presets_build_with_num_classes_and_dropout_head(preset):
    model = build_model(preset, num_classes=6)
    rh = model.roi_heads
    assert isinstance(rh, WeightedRoIHeads)
    assert rh.box_predictor.cls_score.out_features == 6
    assert rh.box_predictor.bbox_pred.out_features == 24
    assert isinstance(rh.box_head, DropoutTwoMLPHead)
    assert any(isinstance(m, MCDropout) and m.p > 0 for m in rh.box_head.modules())


def test_resnet50_short_side_is_configurable():
    model = build_model("resnet50_fpn", num_classes=3, min_size=600, max_size=1000)
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000


def test_tiny_forward_shapes():
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=4).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 256), torch.rand(3, 100, 200)])
    assert len(out) == 2
    for r in out:
        n = len(r["boxes"])
        assert r["boxes"].shape == (n, 4) and r["class_probs"].shape == (n, 4)
        assert torch.all((r["labels"] >= 1) & (r["labels"] <= 3))


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ConfigError, match="valid: d2_config, d2_faster_rcnn_R_50_FPN, lite0_fpn, mobilenet_v3_fpn, resnet50_fpn, tiny"):
        build_model("yolo", num_classes=3)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="bad options"):
        build_model("tiny", num_classes=3, no_such_option=1)


def test_registry_names():
    assert {"tiny", "mobilenet_v3_fpn", "resnet50_fpn"} <= set(PRESETS.names())


def test_lite0_forward_shapes_and_pretrained_options_roundtrip():
    torch.manual_seed(0)
    model = build_model("lite0_fpn", num_classes=4, frozen_bn=True, freeze_at=2).eval()
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 128, 256))
        out = model([torch.rand(3, 128, 256)])
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 32), (8, 16), (4, 8)]  # strides 8/16/32
    assert out[0]["class_probs"].shape[1] == 4
    with pytest.raises(ConfigError, match="freeze_at must be 0..5"):
        build_model("lite0_fpn", num_classes=4, freeze_at=6)
