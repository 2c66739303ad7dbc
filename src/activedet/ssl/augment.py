"""Weak and strong augmentation for student training (torchvision.transforms.v2 on tv_tensors).

* weak (labeled and pseudo-labeled images): horizontal flip + scale jitter (a zoom about the image
  centre, so the detector's own resize does not undo it). Geometric: boxes move with the image.
* strong (pseudo-labeled images, after the weak one): colour jitter, Gaussian blur and Cutout
  (Li et al. Table 6; LabelMatch). Photometric only: boxes are unchanged.

Boxes are ``tv_tensors.BoundingBoxes`` (xyxy, absolute pixels), so every geometric transform moves
them; boxes pushed (almost) out of the frame are removed together with their per-box fields
(``labels``, ``weights``, ``regress``). Randomness comes from torch's global generator: seed it
(``torch.manual_seed``) for reproducible runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

#: per-box target fields that are filtered together with the boxes
BOX_FIELDS = ("labels", "weights", "regress")


@dataclass(frozen=True)
class StrongParams:
    """Strong-augmentation settings (mirrors the stage config's ``StrongAugmentation``)."""

    color_jitter: float = 0.4
    hue: float = 0.1
    color_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout_p: float = 0.7
    cutout_patches: int = 3
    cutout_scale: tuple[float, float] = (0.01, 0.05)


class Cutout(torch.nn.Module):
    """Erase up to ``patches`` random rectangles (each with probability ``p``) to grey noise.

    Operates on the image only (boxes stay: the object is still there, partly hidden).
    """

    def __init__(self, patches: int = 3, p: float = 0.7, scale: tuple[float, float] = (0.01, 0.05)):
        super().__init__()
        self.patches, self.p, self.scale = patches, p, scale

    def forward(self, image: Tensor) -> Tensor:
        _, h, w = image.shape
        out = image.clone()
        for _ in range(self.patches):
            if torch.rand(()) >= self.p:
                continue
            area = float(torch.empty(()).uniform_(*self.scale)) * h * w
            aspect = float(torch.empty(()).uniform_(0.5, 2.0))
            ph = max(1, min(h, int(round((area / aspect) ** 0.5))))
            pw = max(1, min(w, int(round((area * aspect) ** 0.5))))
            y = int(torch.randint(0, h - ph + 1, ()))
            x = int(torch.randint(0, w - pw + 1, ()))
            out[:, y : y + ph, x : x + pw] = torch.rand(()).to(out.dtype) if out.is_floating_point() else 127
        return out


def _labels_getter(sample):
    target = sample[1]
    return tuple(target[k] for k in BOX_FIELDS if k in target)


def weak_transform(*, scale_range: tuple[float, float] = (0.8, 1.2), flip_p: float = 0.5) -> v2.Compose:
    """Horizontal flip + zoom in ``scale_range``; out-of-frame boxes are clamped or dropped."""
    steps = [v2.RandomHorizontalFlip(flip_p)]
    if tuple(scale_range) != (1.0, 1.0):
        steps.append(v2.RandomAffine(degrees=0.0, scale=tuple(scale_range)))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=_labels_getter)]
    return v2.Compose(steps)


def strong_transform(params: StrongParams = StrongParams()) -> v2.Compose:
    """Colour jitter, Gaussian blur, Cutout (photometric: boxes unchanged)."""
    j = params.color_jitter
    steps: list = []
    if params.color_p > 0 and (j > 0 or params.hue > 0):
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=params.hue)], p=params.color_p))
    if params.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=tuple(params.blur_sigma))], p=params.blur_p))
    if params.cutout_patches > 0 and params.cutout_p > 0:
        steps.append(_ImageOnly(Cutout(params.cutout_patches, params.cutout_p, tuple(params.cutout_scale))))
    return v2.Compose(steps or [v2.Identity()])


class _ImageOnly(v2.Transform):
    """Apply a plain ``Tensor -> Tensor`` module to images, pass everything else through."""

    def __init__(self, fn: torch.nn.Module):
        super().__init__()
        self.fn = fn

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(self.fn(inpt.as_subclass(Tensor)), like=inpt)
        return inpt


class Augment:
    """``(image [3, H, W] float in [0, 1], target) -> (image, target)`` for one view kind.

    ``target`` holds ``boxes [N, 4]`` xyxy pixels and any of ``labels``, ``weights``, ``regress``
    (``[N]`` each) plus image-level entries (passed through). ``strong=True`` applies the weak
    transform and then the strong one.
    """

    def __init__(self, *, strong: bool, scale_range=(0.8, 1.2), flip_p: float = 0.5, params: StrongParams = StrongParams()):
        self.weak = weak_transform(scale_range=scale_range, flip_p=flip_p)
        self.strong = strong_transform(params) if strong else None

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        h, w = image.shape[-2:]
        target = dict(target)
        target["boxes"] = tv_tensors.BoundingBoxes(
            torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        )
        img = tv_tensors.Image(image)
        img, target = self.weak(img, target)
        if self.strong is not None:
            img, target = self.strong(img, target)
        target["boxes"] = target["boxes"].as_subclass(Tensor)
        return img.as_subclass(Tensor), target
