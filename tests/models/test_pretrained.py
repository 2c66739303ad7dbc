"""Pretrained starts: ImageNet / state-dict backbones, init checkpoints across classes, partial-load
reports, fine-tuning options (frozen BN, freeze_at), and the one-line failures."""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from activedet import store
from activedet.models.checkpoint import build_detector, detector_for_dataset, write_checkpoint
from activedet.models.init import PREDICTOR, load_backbone_weights, load_init_checkpoint, partial_load
from activedet.models.presets import BACKBONE_KEYS, build_model
from activedet.models.weights import WeightsError, lite0_file, lite0_to_timm, read_state_file
from activedet.stages import train_teacher

TRAIN = {"iterations": 2, "batch_size": 2, "checkpoint_every": 0, "warmup_iters": 0, "device": "cpu", "seed": 0}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lite0_state():
    return read_state_file(lite0_file())


def test_every_tensor_of_the_lite0_file_lands_in_the_backbone(lite0_state):
    body = build_model("lite0_fpn", num_classes=3).backbone.body
    mapped = BACKBONE_KEYS["lite0_fpn"](lite0_state)
    report = partial_load(body, mapped, backbone_prefix="")
    assert report.missing == report.unexpected == report.wrong_shape == 0
    assert report.matched == report.backbone_total == len([k for k in body.state_dict() if not k.endswith("num_batches_tracked")])
    # the mapping is the file's layout, not a coincidence of shapes: spot-check named tensors
    own = body.state_dict()
    assert torch.equal(own["conv_stem.weight"], lite0_state["_conv_stem.weight"])
    assert torch.equal(own["blocks.1.0.conv_pw.weight"], lite0_state["_blocks.1._expand_conv.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], lite0_state["_blocks.15._project_conv.weight"])
    # only the classifier head is left out
    dropped = set(lite0_to_timm(lite0_state)) - set(mapped)
    assert {k.split(".")[0] for k in dropped} == {"conv_head", "bn2", "classifier"}


def test_imagenet_lite0_trains_offline_with_frozen_stem_and_provenance(synth_dataset, lite0_state, tmp_path):
    out = tmp_path / "t"
    train_teacher.run(train_teacher.Config(
        dataset_uri=synth_dataset, output_uri=str(out), preset="lite0_fpn", backbone_weights="imagenet", lr=0.02, **TRAIN
    ))
    meta = json.loads((out / "meta.json").read_text())
    record = meta["weights_init"]["backbone_weights"]
    assert record["spec"] == "imagenet" and record["sha256"] == _sha(lite0_file())
    assert record["report"]["backbone_share"] == 1.0
    assert meta["options"]["frozen_bn"] is True and meta["options"]["freeze_at"] == 2  # the papers' defaults
    from activedet.models.checkpoint import load_detector

    body = load_detector(str(out)).model.backbone.body
    for ours, theirs in [("conv_stem.weight", "_conv_stem.weight"), ("bn1.running_mean", "_bn0.running_mean"),
                         ("bn1.weight", "_bn0.weight"), ("blocks.1.1.conv_dw.weight", "_blocks.2._depthwise_conv.weight")]:
        assert torch.equal(body.state_dict()[ours], lite0_state[theirs]), ours  # frozen: unchanged by training
    assert not torch.equal(body.state_dict()["blocks.2.0.conv_pw.weight"], lite0_state["_blocks.3._expand_conv.weight"])
    # a model started from this checkpoint records where that one started
    det = build_detector("lite0_fpn", category_ids=[1], class_names=["x"], **meta["options"])
    record = load_init_checkpoint(det, str(out))
    assert record["inherited"]["backbone_weights"]["sha256"] == _sha(lite0_file())
    assert record["report"]["predictor_reinitialised"] is True and record["sha256"] == _sha(out / "model.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_from_a_local_state_dict_file(tmp_path, suffix):
    torch.manual_seed(0)
    donor = build_model("lite0_fpn", num_classes=3).backbone.body.state_dict()
    state = {k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v for k, v in donor.items()}
    path = tmp_path / f"backbone{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    det = build_detector("lite0_fpn", category_ids=[1, 2], class_names=["a", "b"])
    record = load_backbone_weights(det, str(path))
    assert record["sha256"] == _sha(path) and record["report"]["backbone_share"] == 1.0
    assert torch.equal(det.model.backbone.body.state_dict()["blocks.3.2.conv_dw.weight"], state["blocks.3.2.conv_dw.weight"])


def test_init_checkpoint_of_other_classes_loads_all_but_the_predictor(synth_dataset, synth, tmp_path):
    other = tmp_path / "other"
    torch.manual_seed(3)
    donor = build_detector("tiny", category_ids=[7], class_names=["bus"])
    with store.OutputWriter(str(other)) as w:
        write_checkpoint(w, donor)
    out = tmp_path / "t"
    train_teacher.run(train_teacher.Config(
        dataset_uri=synth_dataset, output_uri=str(out), init_checkpoint_uri=str(other), **{**TRAIN, "iterations": 1, "lr": 1e-9}
    ))
    report = json.loads((out / "meta.json").read_text())["weights_init"]["init_checkpoint"]["report"]
    n_predictor = len([k for k in donor.model.state_dict() if k.startswith(PREDICTOR)])
    counted = [k for k in donor.model.state_dict() if not k.endswith("num_batches_tracked")]
    assert report["predictor_reinitialised"] is True
    assert report["missing"] == n_predictor == 4 and report["matched"] == len(counted) - n_predictor
    assert report["unexpected"] == report["wrong_shape"] == 0 and report["backbone_share"] == 1.0


def test_state_dict_file_with_another_class_count_reports_wrong_shapes(synth, tmp_path):
    donor = build_detector("tiny", category_ids=[7], class_names=["bus"]).model.state_dict()
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in donor.items()}, str(path))
    det = detector_for_dataset("tiny", synth)
    record = load_init_checkpoint(det, str(path))
    assert record["report"]["wrong_shape"] == 4 and record["report"]["predictor_reinitialised"] is True
    assert record["sha256"] == _sha(path)


def test_a_wrong_file_fails_in_one_line(synth_dataset, tmp_path):
    wrong = tmp_path / "resnet_like.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}, str(wrong))
    det = build_detector("lite0_fpn", category_ids=[1], class_names=["a"])
    with pytest.raises(WeightsError) as exc:
        load_backbone_weights(det, str(wrong))
    assert "backbone tensors matched" in str(exc.value) and "\n" not in str(exc.value)
    # a tiny checkpoint as the init of a lite0 model: nothing of the backbone fits
    tiny = tmp_path / "tiny"
    with store.OutputWriter(str(tiny)) as w:
        write_checkpoint(w, build_detector("tiny", category_ids=[1], class_names=["a"]))
    with pytest.raises(WeightsError, match="0/240 backbone tensors matched"):
        load_init_checkpoint(det, str(tiny))
    # the bar is configurable
    partial = tmp_path / "half.safetensors"
    body = det.model.backbone.body.state_dict()
    keep = [k for k in body if not k.endswith("num_batches_tracked")][:120]
    save_file({k: body[k].contiguous() for k in keep}, str(partial))
    with pytest.raises(WeightsError):
        load_backbone_weights(det, str(partial))
    assert load_backbone_weights(det, str(partial), min_backbone_match=0.4)["report"]["backbone_matched"] == 120


def test_pickled_objects_are_refused(tmp_path):
    import datetime

    path = tmp_path / "evil.pth"
    torch.save({"when": datetime.datetime(2020, 1, 1)}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_file(path)


def test_offline_imagenet_without_cache_names_the_file_and_where(synth_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ACTIVEDET_WEIGHTS_DOWNLOAD", "0")
    monkeypatch.delenv("ACTIVEDET_WEIGHTS_MIRROR", raising=False)
    from activedet.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["-q", "stage", "train-teacher", "--dataset-uri", synth_dataset, "--output-uri", str(tmp_path / "o"),
                     "--preset", "resnet50_fpn", "--backbone-weights", "imagenet", "--device", "cpu"])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err.getvalue()
    assert "resnet50-0676ba61.pth" in lines[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in lines[0]
    assert not (tmp_path / "o").exists()


def test_torchvision_detection_name_without_cache_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ACTIVEDET_WEIGHTS_DOWNLOAD", "0")
    det = build_detector("tiny", category_ids=[1], class_names=["a"])
    with pytest.raises(WeightsError, match="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"):
        load_init_checkpoint(det, "fasterrcnn_resnet50_fpn")
    with pytest.raises(WeightsError, match="not a checkpoint, a weights file or a torchvision model name"):
        load_init_checkpoint(det, "no_such_model")


def test_freeze_at_and_frozen_bn():
    from torchvision.ops import FrozenBatchNorm2d

    model = build_model("lite0_fpn", num_classes=3, freeze_at=2)
    body = model.backbone.body
    frozen = {n.split(".")[0] if n.startswith(("conv_stem", "bn1")) else ".".join(n.split(".")[:2])
              for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv_stem", "blocks.0", "blocks.1"}  # their BN is frozen: buffers, no parameters
    trainable_bn = [n for n, m in body.named_modules() if type(m).__name__ == "BatchNormAct2d"]
    assert trainable_bn and not any(n.startswith(("bn1", "blocks.0.", "blocks.1.")) for n in trainable_bn)  # frozen stages' BN too
    assert all(p.requires_grad for p in model.rpn.parameters()) and all(p.requires_grad for p in model.backbone.fpn.parameters())
    frozen_bn = build_model("lite0_fpn", num_classes=3, frozen_bn=True).backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_bn.modules())
    r50 = build_model("resnet50_fpn", num_classes=3, frozen_bn=True, freeze_at=2, min_size=64, max_size=64)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in r50.backbone.body.modules())
    grads = {n.split(".")[0]: p.requires_grad for n, p in r50.backbone.body.named_parameters()}
    assert grads == {"conv1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}


def test_mirror_bucket_fills_the_cache_and_bad_digests_are_refused(s3_bucket, tmp_path, monkeypatch):
    from activedet.models.weights import backbone_state, cached_torchvision_file, torchvision_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ACTIVEDET_WEIGHTS_DOWNLOAD", "0")
    monkeypatch.setenv("ACTIVEDET_WEIGHTS_MIRROR", f"{s3_bucket}/weights")
    weights = torchvision_weights("ResNet50_Weights", "IMAGENET1K_V1")
    fake = tmp_path / "fake.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, fake)
    store.upload(fake, f"{s3_bucket}/weights/resnet50-0676ba61.pth")  # right name, wrong content
    with pytest.raises(WeightsError, match="resnet50-0676ba61.pth"):
        cached_torchvision_file(weights, spec="imagenet")
    assert not list((tmp_path / "torch" / "hub" / "checkpoints").iterdir())  # nothing half-written stays
    # a state dict in the bucket is also a valid backbone_weights URI, read with weights_only
    state, source = backbone_state("resnet50_fpn", f"{s3_bucket}/weights/resnet50-0676ba61.pth")
    assert list(state) == ["conv1.weight"] and source.sha256 == _sha(fake)


def test_teacher_lr_defaults_to_the_presets_own_rate():
    """tiny's 0.04 left the ImageNet lite0_fpn at AP ~0 (benchmarks/certainty_head.py): each preset has its rate."""
    from activedet.config import load_config
    from activedet.models.presets import FALLBACK_LR, PRESET_LR, PRESETS

    base = {"dataset_uri": "/d", "output_uri": "/o"}
    assert set(PRESET_LR) <= set(PRESETS.names())
    for preset, lr in PRESET_LR.items():
        assert load_config(train_teacher.Config, {**base, "preset": preset}).lr == lr
    assert PRESET_LR["lite0_fpn"] < PRESET_LR["tiny"]
    assert load_config(train_teacher.Config, base).lr == PRESET_LR["tiny"]  # the default preset
    assert load_config(train_teacher.Config, {**base, "preset": "lite0_fpn", "lr": 0.005}).lr == 0.005  # given wins
    assert load_config(train_teacher.Config, {**base, "preset": "lite0_fpn", "lr": None}).lr == PRESET_LR["lite0_fpn"]
    assert FALLBACK_LR <= min(PRESET_LR.values())
