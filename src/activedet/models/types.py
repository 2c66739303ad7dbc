"""Prediction containers shared by inference, pseudo-labeling and scoring.

Conventions: boxes are ``xyxy`` absolute pixels in the *original* image frame; ``labels`` are
dataset category ids; ``class_probs`` rows have ``C + 1`` entries, index 0 background and index
k the k-th category in ascending id order (torchvision's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections of one image (after NMS unless stated).

    Shapes: ``boxes [N, 4]`` float32, ``labels [N]`` int64 (category ids), ``scores [N]``
    float32, ``class_probs [N, C + 1]`` float32, ``loc_quality [N]`` float32 in [0, 1] (the
    certainty head's localization quality ``v``; ``None`` for the standard head).
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_probs: np.ndarray
    loc_quality: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class ImagePrediction:
    """Everything the inference API can return for one image.

    * ``detections`` -- final detections after NMS.
    * ``pre_nms`` -- optional candidates before NMS (same fields) and ``merged_into [M]``:
      the index in ``detections`` of the kept box each candidate was suppressed by or is
      (-1 when it was dropped for another reason). Used by RPLM.
    * ``flipped`` -- optional detections on the horizontally flipped image, mapped back to the
      original frame (flip TTA; used by the inconsistency score).
    * ``mc_probs`` -- optional ``[T, N, C + 1]`` class distributions of the kept boxes under T
      stochastic passes with dropout in the box head (MC dropout).
    * ``embedding`` -- optional ``[D]`` L2-normalised pooled backbone features.
    """

    image_id: str
    width: int
    height: int
    detections: Detections
    pre_nms: Detections | None = None
    merged_into: np.ndarray | None = None
    flipped: Detections | None = None
    mc_probs: np.ndarray | None = None
    embedding: np.ndarray | None = None


def loc_quality_values(dets: Detections, mask: np.ndarray) -> list[float | None]:
    """``loc_quality`` column values of the detections where ``mask`` (None: the head gives none)."""
    if dets.loc_quality is None:
        return [None] * int(np.count_nonzero(mask))
    return [float(v) for v in np.clip(dets.loc_quality[mask], 0.0, 1.0)]
