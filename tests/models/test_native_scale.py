"""Native-scale models trained on random crops: small objects in large frames keep their pixel size.

``preset_options.native_scale`` swaps the model's resize out (training and inference alike);
``training.crop_size`` trains on random crops at the images' own resolution. Together they let a
CPU train on full-resolution driving frames (e.g. traffic-cams: median box 26 x 22 px at 640 x 360,
~9 px once resized to the presets' 128 px short side) at the cost of a crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activedet.errors import ConfigError
from activedet.models.presets import NativeScaleTransform, build_model, check_crop, is_native_scale


def test_native_scale_model_keeps_every_input_resolution_in_training_and_inference():
    sizes = [(100, 150), (128, 256)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    native = build_model("tiny", num_classes=4, native_scale=True)
    assert isinstance(native.transform, NativeScaleTransform) and is_native_scale(native)
    for mode in (native.eval, native.train):
        mode()
        batch, _ = native.transform(images)
        assert [tuple(s) for s in batch.image_sizes] == sizes
    resized, _ = build_model("tiny", num_classes=4).eval().transform(images)
    assert [tuple(s) for s in resized.image_sizes] != sizes  # the default resizes the short side to 128
    with torch.no_grad():
        out = native.eval()(images)
    for (h, w), o in zip(sizes, out, strict=True):  # boxes in input pixels, inside each image
        assert o["boxes"].shape[1] == 4 and (o["boxes"][:, 2] <= w + 1e-4).all() and (o["boxes"][:, 3] <= h + 1e-4).all()


def _offset_of(crop: torch.Tensor, full: torch.Tensor) -> tuple[int, int]:
    """Where ``crop`` [3, h, w] sits inside ``full`` [3, H, W] (exact match)."""
    h, w = crop.shape[-2:]
    for top in range(full.shape[-2] - h + 1):
        for left in range(full.shape[-1] - w + 1):
            if torch.equal(full[:, top, left : left + w], crop[:, 0]) and torch.equal(full[:, top : top + h, left : left + w], crop):
                return top, left
    raise AssertionError("the crop is not a window of the image")


def test_crop_is_a_window_of_the_image_at_its_own_scale_with_boxes_clipped(synth):
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.data import DetectionDataset

    det = detector_for_dataset("tiny", synth)
    ids = synth.split_ids("train")[:4]
    full = DetectionDataset(synth, ids, category_ids=det.category_ids, train=False)
    crops = DetectionDataset(synth, ids, category_ids=det.category_ids, train=True, hflip=0.0, scale_jitter=None,
                             crop_size=(64, 96))
    torch.manual_seed(0)
    for k in range(len(ids)):
        (img, t), (crop, c) = full[k], crops[k]
        assert crop.shape == (3, 64, 96)
        top, left = _offset_of(crop, img)
        shifted = t["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        clipped = torch.stack([shifted[:, 0].clamp(0, 96), shifted[:, 1].clamp(0, 64),
                               shifted[:, 2].clamp(0, 96), shifted[:, 3].clamp(0, 64)], 1)
        kept = ((clipped[:, 2] - clipped[:, 0]) >= 2) & ((clipped[:, 3] - clipped[:, 1]) >= 2)
        # the crop's targets are exactly the image's boxes moved into the window, clipped, specks dropped
        np.testing.assert_allclose(c["boxes"].numpy(), clipped[kept].numpy(), atol=1e-4)
        assert torch.equal(c["labels"], t["labels"][kept])


def test_crop_larger_than_the_image_pads_to_the_crop_size(synth):
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.data import DetectionDataset

    det = detector_for_dataset("tiny", synth)
    data = DetectionDataset(synth, synth.split_ids("train")[:1], category_ids=det.category_ids, train=True,
                            hflip=0.0, scale_jitter=None, crop_size=(160, 300))
    img, t = data[0]
    assert img.shape == (3, 160, 300)
    assert (t["boxes"][:, 2] <= 300).all() and (t["boxes"][:, 3] <= 160).all()


def test_crop_size_without_native_scale_fails_at_load_naming_both_keys(synth_dataset):
    from activedet.pipeline.plan import load_experiment

    base = {"name": "crop", "dataset": {"uri": synth_dataset}, "initial_size": 2, "budget": 2, "cycles": 2,
            "training": {"preset": "tiny", "crop_size": [64, 96]}}
    with pytest.raises(ConfigError, match="crop_size.*native_scale"):
        load_experiment(base)
    exp = load_experiment({**base, "training": {**base["training"], "preset_options": {"native_scale": True}}})
    from activedet.pipeline.layout import RunLayout
    from activedet.stages import train_student_ssl, train_teacher

    layout = RunLayout("/tmp/run", exp)
    assert train_teacher.from_experiment(exp, layout, 1).crop_size == (64, 96)
    assert train_student_ssl.from_experiment(exp, layout, 1).crop_size == (64, 96)


def test_native_scale_is_a_torchvision_option_only():
    from activedet.stages.train_teacher import check_preset

    check_preset("lite0_fpn", {"native_scale": True})
    with pytest.raises(ConfigError, match="native_scale"):
        check_preset("d2_faster_rcnn_R_50_FPN", {"native_scale": True})


def test_student_refuses_crops_of_a_resizing_teacher():
    with pytest.raises(ConfigError, match="native_scale"):
        check_crop((64, 96), build_model("tiny", num_classes=3), where="train-student-ssl")
    check_crop(None, build_model("tiny", num_classes=3), where="train-student-ssl")
    check_crop((64, 96), build_model("tiny", num_classes=3, native_scale=True), where="train-student-ssl")


def test_teacher_trained_on_crops_round_trips_as_a_native_scale_checkpoint(synth_dataset, tmp_path):
    import json

    from activedet.models.checkpoint import load_detector
    from activedet.stages import init, train_teacher

    ledger = str(tmp_path / "ledger")
    init.run(init.Config(dataset_uri=synth_dataset, output_uri=ledger, initial_size=4))
    out = str(tmp_path / "teacher")
    train_teacher.run(train_teacher.Config(
        dataset_uri=synth_dataset, ledger_uri=ledger, output_uri=out, preset="tiny", preset_options={"native_scale": True},
        crop_size=(64, 96), iterations=2, batch_size=2, warmup_iters=1, device="cpu", checkpoint_every=0,
    ))
    meta = json.loads((tmp_path / "teacher" / "meta.json").read_text())
    assert meta["input_size"] == {"native_scale": True}
    assert is_native_scale(load_detector(out).model)
