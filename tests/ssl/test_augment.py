"""Augmentation keeps boxes on their objects."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from activedet.ssl.augment import Augment, Cutout, StrongParams


def scene():
    """A red rectangle at (40, 20)-(90, 60) on a black 80x128 image."""
    img = torch.zeros(3, 80, 128)
    img[0, 20:60, 40:90] = 1.0
    box = torch.tensor([[40.0, 20.0, 90.0, 60.0]])
    return img, box


def test_weak_view_boxes_enclose_the_rectangle_and_fit_it():
    aug = Augment(strong=False, scale_range=(0.6, 1.4))
    flips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        img, box = scene()
        out, target = aug(img, {"boxes": box, "labels": torch.tensor([1]), "weights": torch.tensor([0.5]), "regress": torch.tensor([True])})
        assert out.shape == img.shape
        red = out[0] > 0.5
        ys, xs = torch.nonzero(red, as_tuple=True)
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        # every red pixel lies in the box (1 px slack for interpolation) and the box is tight
        assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2
        assert abs(xs.min() - x1) <= 2 and abs(xs.max() + 1 - x2) <= 2
        assert abs(ys.min() - y1) <= 2 and abs(ys.max() + 1 - y2) <= 2
        assert target["weights"].tolist() == [0.5] and target["regress"].tolist() == [True]
        flips += x1 < 40 - 5
    assert 0 < flips < 20  # the flip actually happens sometimes


def test_strong_view_moves_boxes_with_the_object_mask():
    aug = Augment(strong=True, scale_range=(0.6, 1.4), params=StrongParams(cutout_p=1.0, blur_p=1.0, color_p=1.0))
    for seed in range(10):
        torch.manual_seed(seed)
        img, box = scene()
        mask = tv_tensors.Mask((img[0] > 0.5)[None].to(torch.uint8))
        out, target = aug(img, {"boxes": box, "labels": torch.tensor([1]), "masks": mask})
        assert not torch.equal(out, img)
        ys, xs = torch.nonzero(target["masks"][0] > 0, as_tuple=True)
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        assert abs(xs.min() - x1) <= 2 and abs(xs.max() + 1 - x2) <= 2
        assert abs(ys.min() - y1) <= 2 and abs(ys.max() + 1 - y2) <= 2


def test_boxes_pushed_out_of_frame_are_dropped_with_their_fields():
    aug = Augment(strong=False, scale_range=(1.8, 1.8), flip_p=0.0)  # zoom in about the centre
    img = torch.zeros(3, 80, 128)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [54.0, 30.0, 74.0, 50.0]])
    out, target = aug(img, {"boxes": boxes, "labels": torch.tensor([1, 2]), "weights": torch.tensor([0.1, 0.9])})
    assert target["labels"].tolist() == [2]
    assert target["weights"].tolist() == [pytest.approx(0.9)]


def test_cutout_erases_patches_only_in_the_image():
    torch.manual_seed(0)
    img = torch.zeros(3, 50, 50)
    out = Cutout(patches=2, p=1.0, scale=(0.05, 0.05))(img)
    changed = (out != img).any(0).float().mean()
    assert 0 < changed <= 0.1
