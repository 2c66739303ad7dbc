"""The detector backend interface, run against both backends (torchvision and detectron2).

The detectron2 cases use a small R-18 FPN through ``preset_options.overrides`` at 64-128 px input,
so they stay CPU-cheap; without detectron2 installed they skip (``make test`` installs the
vendored wheel from ../shared/vendor/ when it is there).
"""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch

HAS_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAS_D2, reason="detectron2 not installed (make test installs ../shared/vendor's wheel)")

#: a CPU-cheap detectron2 Faster R-CNN: the model-zoo R50-FPN config with an R-18 body and light heads
D2_SMALL = {
    "min_size": 96, "max_size": 192,
    "overrides": {
        "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 64,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 128, "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 300, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 200, "MODEL.RPN.POST_NMS_TOPK_TEST": 60, "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
    },
}
BACKENDS = [
    pytest.param(("tiny", {}), id="torchvision"),
    pytest.param(("d2_faster_rcnn_R_50_FPN", D2_SMALL), id="detectron2", marks=needs_d2),
]
# the box-head classification loss of each backend (the names are the frameworks' own)
CLS_LOSS = {"tiny": "loss_classifier", "d2_faster_rcnn_R_50_FPN": "loss_cls"}
RPN_BOX_LOSS = {"tiny": "loss_rpn_box_reg", "d2_faster_rcnn_R_50_FPN": "loss_rpn_loc"}


@pytest.fixture(params=BACKENDS)
def preset(request):
    return request.param


def _detector(preset, category_ids=(1, 2, 3), seed=0):
    from activedet.models.checkpoint import build_detector

    name, options = preset
    torch.manual_seed(seed)
    return build_detector(name, category_ids=list(category_ids), class_names=[f"c{c}" for c in category_ids], **options)


def _batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 128, generator=g), torch.rand(3, 64, 128, generator=g)]
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [60.0, 10.0, 100.0, 50.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[20.0, 16.0, 70.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def _losses(model, images, targets, **extra):
    model.train()
    torch.manual_seed(5)  # the same proposal sampling in every call
    with_extra = [{**t, **{k: (v(t) if callable(v) else v) for k, v in extra.items()}} for t in targets]
    return model(images, with_extra)


def test_train_step_honours_per_box_weights(preset):
    det = _detector(preset)
    images, targets = _batch()
    base = _losses(det.model, images, targets)
    assert base and all(torch.isfinite(v) for v in base.values())
    cls = CLS_LOSS[preset[0]]
    doubled = _losses(det.model, images, targets, weights=lambda t: torch.full((len(t["labels"]),), 2.0), bg_weight=2.0)
    assert float(doubled[cls]) == pytest.approx(2 * float(base[cls]), rel=1e-4)
    zero = _losses(det.model, images, targets, weights=lambda t: torch.zeros(len(t["labels"])), bg_weight=0.0)
    assert float(zero[cls]) == 0.0
    no_reg = _losses(det.model, images, targets, regress=lambda t: torch.zeros(len(t["labels"]), dtype=torch.bool))
    box = "loss_box_reg"
    assert float(no_reg[box]) == 0.0 and float(base[box]) > 0.0
    rpn_box = RPN_BOX_LOSS[preset[0]]  # uncertain boxes give no RPN box regression either (objectness stays)
    assert float(no_reg[rpn_box]) == 0.0 and float(base[rpn_box]) > 0.0
    sum(base.values()).backward()  # the step's loss is differentiable end to end
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.model.parameters())


def test_predict_gives_distributions_views_mc_and_embeddings(preset):
    from activedet.models.predict import Predictor

    det = _detector(preset)
    images, _ = _batch()
    pred = Predictor(det, device="cpu", score_floor=0.0, max_dets=20)
    out = pred.predict_images(images, ["a", "b"], flip_tta=True, pre_nms=True, embeddings=True, mc_samples=3)
    assert [p.image_id for p in out] == ["a", "b"]
    for p in out:
        d = p.detections
        assert 0 < len(d) <= 20 and d.class_probs.shape == (len(d), 4)
        np.testing.assert_allclose(d.class_probs.sum(1), 1.0, atol=1e-4)
        assert set(d.labels.tolist()) <= {1, 2, 3}
        assert (d.boxes[:, 2] <= 128 + 1e-3).all() and (d.boxes[:, 3] <= 64 + 1e-3).all()  # the input frame
        assert p.flipped is not None and p.flipped.class_probs.shape[1] == 4
        assert p.mc_probs.shape == (3, len(d), 4)
        assert len(p.pre_nms) >= len(d) and p.merged_into.shape == (len(p.pre_nms),)
        assert p.merged_into.max() < len(d)
        assert np.linalg.norm(p.embedding) == pytest.approx(1.0, abs=1e-5)
    # the MC passes differ (dropout on) while the deterministic passes repeat exactly
    assert not np.allclose(out[0].mc_probs[0], out[0].mc_probs[1])
    again = pred.predict_images(images, ["a", "b"])
    np.testing.assert_array_equal(again[0].detections.scores, out[0].detections.scores)


def test_checkpoint_round_trip_predicts_the_same(preset, tmp_path):
    from activedet import store
    from activedet.models.checkpoint import load_detector, read_checkpoint_meta, write_checkpoint
    from activedet.models.predict import Predictor

    det = _detector(preset)
    with store.OutputWriter(str(tmp_path / "ckpt")) as out:
        uri = write_checkpoint(out, det)
    meta = read_checkpoint_meta(uri)
    assert meta["backend"] == det.backend.name and meta["input_size"] == det.input_size()
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pth"))  # safetensors + meta.json only
    back = load_detector(uri)
    images, _ = _batch()
    a = Predictor(det, device="cpu", score_floor=0.0).predict_images(images, ["a", "b"])
    b = Predictor(back, device="cpu", score_floor=0.0).predict_images(images, ["a", "b"])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.detections.boxes, y.detections.boxes, atol=1e-4)
        np.testing.assert_allclose(x.detections.class_probs, y.detections.class_probs, atol=1e-5)


def test_pickled_weights_load_through_the_restricted_loader(preset, tmp_path):
    """A .pkl of plain arrays (detectron2 model-zoo layout) loads into the partial-load report; the
    predictor is re-initialised when the classes differ."""
    from activedet.models.init import load_init_checkpoint

    src = _detector(preset, category_ids=(1, 2, 3, 4, 5), seed=3)
    arrays = {k: v.numpy() for k, v in src.model.state_dict().items()}
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}, protocol=2))
    dst = _detector(preset)
    record = load_init_checkpoint(dst, str(path))
    report = record["report"]
    assert report["backbone_share"] == 1.0 and report["predictor_reinitialised"]
    assert report["wrong_shape"] >= 2  # the class-specific predictor tensors
    key = next(k for k in arrays if k.startswith(dst.backend.backbone_prefix) and k.endswith("weight"))
    torch.testing.assert_close(dst.model.state_dict()[key], torch.from_numpy(arrays[key]))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_loader_refuses_arbitrary_objects(tmp_path):
    from activedet.models.weights import WeightsError, read_state_file

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": _Evil()}))
    with pytest.raises(WeightsError, match=r"refused to unpickle (posix|os)\.system") as exc:
        read_state_file(path)
    assert "\n" not in str(exc.value)


def test_cli_refuses_an_evil_pickle_with_exit_2(tmp_path, synth_dataset, capsys):
    from activedet.cli.main import main

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    out = tmp_path / "teacher"
    code = main(["stage", "train-teacher", "--dataset-uri", synth_dataset, "--output-uri", str(out),
                 "--init-checkpoint-uri", str(path), "--iterations", "1", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "refused to unpickle" in err and "evil.pkl" in err
    assert not out.exists()  # nothing half-written


@needs_d2
def test_d2_user_config_file_with_base_and_overrides(tmp_path):
    """preset d2_config: a user's YAML (with _BASE_) + overrides; the checkpoint keeps the resolved config."""
    from detectron2 import model_zoo

    from activedet.models.checkpoint import build_detector

    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"_BASE_: {model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')}\n"
                   "MODEL:\n  ROI_BOX_HEAD:\n    FC_DIM: 96\n")
    det = build_detector("d2_config", category_ids=[1, 2], class_names=["a", "b"],
                         config_file=str(cfg), min_size=64, max_size=128, overrides=D2_SMALL["overrides"] | {"MODEL.ROI_BOX_HEAD.FC_DIM": 96})
    assert det.model.roi_heads.box_predictor.cls_score.out_features == 3  # C + 1 from the dataset, not the config
    assert det.model.roi_heads.box_head.fc1.out_features == 96
    assert "FC_DIM: 96" in det.options["config_yaml"] and det.input_size() == {"min_size": [64], "max_size": 128}


@needs_d2
@pytest.mark.parametrize(("options", "message"), [
    ({"config_file": "nowhere.yaml"}, "file not found"),
    ({"config_file": "x.py"}, "only detectron2 YAML configs"),
    ({"config_file": None, "overrides": {}}, "set preset_options.config_file"),
])
def test_d2_config_bad_input_is_one_line(options, message):
    from activedet.errors import ConfigError
    from activedet.models.checkpoint import build_detector

    with pytest.raises(ConfigError, match=message) as exc:
        build_detector("d2_config", category_ids=[1], class_names=["a"], **options)
    assert "\n" not in str(exc.value)


@needs_d2
def test_d2_unknown_override_key_is_one_line():
    from activedet.errors import ConfigError
    from activedet.models.checkpoint import build_detector

    with pytest.raises(ConfigError, match=r"preset_options.overrides: .*MODEL.NOPE"):
        build_detector("d2_faster_rcnn_R_50_FPN", category_ids=[1], class_names=["a"], overrides={"MODEL.NOPE": 1})


def test_backend_is_chosen_from_the_preset():
    from activedet.models.backend import backend_for

    assert backend_for("tiny").name == "torchvision" and backend_for("resnet50_fpn").name == "torchvision"
    assert backend_for("d2_config").name == "detectron2" and backend_for("d2_faster_rcnn_R_50_FPN").name == "detectron2"


def test_detectron2_is_imported_only_for_its_presets():
    import subprocess
    import sys

    code = ("import sys; from activedet.models.checkpoint import build_detector; from activedet.pipeline import dag; "
            "build_detector('tiny', category_ids=[1], class_names=['a']); assert 'detectron2' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_d2_preset_without_detectron2_says_how_to_install(monkeypatch):
    import sys

    from activedet.errors import ConfigError
    from activedet.models.checkpoint import build_detector

    monkeypatch.setitem(sys.modules, "detectron2", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"needs detectron2 .*install it from its repository") as exc:
        build_detector("d2_faster_rcnn_R_50_FPN", category_ids=[1], class_names=["a"])
    assert "\n" not in str(exc.value)


@needs_d2
def test_d2_backbone_only_pkl_is_matched_by_detectron2_heuristics(tmp_path):
    """An ImageNet-style backbone file (keys without the detector's ``backbone.bottom_up.`` prefix)
    lands on the backbone through detectron2's name matching."""
    from activedet.models.init import load_init_checkpoint

    src = _detector(("d2_faster_rcnn_R_50_FPN", D2_SMALL), seed=4)
    prefix = "backbone.bottom_up."
    arrays = {k[len(prefix):]: v.numpy() for k, v in src.model.state_dict().items() if k.startswith(prefix)}
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"model": arrays, "matching_heuristics": True}))
    dst = _detector(("d2_faster_rcnn_R_50_FPN", D2_SMALL))
    report = load_init_checkpoint(dst, str(path))["report"]
    assert report["backbone_share"] == 1.0 and report["predictor_reinitialised"]
    key = "res2.0.conv1.weight"
    torch.testing.assert_close(dst.model.state_dict()[prefix + key], torch.from_numpy(arrays[key]))


@needs_d2
def test_d2_preset_takes_box_head_standard_and_refuses_certainty():
    from activedet.errors import ConfigError
    from activedet.models.checkpoint import build_detector

    name, options = BACKENDS[1].values[0]
    assert build_detector(name, category_ids=[1], class_names=["a"], box_head="standard", **options).backend.name == "detectron2"
    with pytest.raises(ConfigError, match="standard box head only"):
        build_detector(name, category_ids=[1], class_names=["a"], box_head="certainty", **options)


@needs_d2
def test_d2_losses_equal_detectron2s_own_with_unit_weights():
    """With every weight 1 and every box regressed, the wrapper's losses are detectron2's."""
    from activedet.models.d2 import _event_storage

    det = _detector(("d2_faster_rcnn_R_50_FPN", D2_SMALL))
    model = det.model.train()
    images, targets = _batch()
    ours = _losses(model, images, targets)
    il, scales = model.preprocess(images)
    gt = [model._instances(t, s, tuple(size)) for t, s, size in zip(targets, scales, il.image_sizes, strict=True)]
    torch.manual_seed(5)
    with _event_storage():
        features = model.backbone(il.tensor)
        proposals, rpn = model.proposal_generator(il, features, gt)
        _, box = model.roi_heads(il, features, proposals, gt)
    for key, value in {**rpn, **box}.items():
        assert float(ours[key]) == pytest.approx(float(value), rel=1e-5), key
