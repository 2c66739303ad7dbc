"""Acquisition scores: per-image uncertainty from a detector's (post-NMS) predictions.

Design (after baal's heuristics): :class:`AcquisitionScore` owns everything shared -- the score
floor (boxes with detection score below it are ignored), aggregation of box scores into one image
score (``max`` / ``mean`` / ``sum``) and NaN handling (non-finite box scores are dropped and
logged). A heuristic only implements :meth:`AcquisitionScore.box_scores`.

An image with no box above the floor scores ``0.0``: nothing detected means nothing uncertain to
resolve (Elezi's code does the same). NMS is the detector's job: every input here is post-NMS.

Registered scores (registry ``SCORES``, kind "acquisition score"):

* ``entropy`` -- Shannon entropy (nats) of each box's class distribution ``q`` (C + 1 entries,
  background included).
* ``inconsistency`` -- flip consistency: boxes of the original image and of the flipped image
  (mapped back to the original frame) are matched greedily by IoU; a matched pair scores the
  symmetric KL ``(KL(p||q) + KL(q||p)) / 2`` or the Jensen-Shannon divergence of their ``q``. An
  unmatched box (no partner with IoU >= ``match_iou`` among *all* boxes of the other view) is, by
  default (``unmatched="ignore"``), left out; ``unmatched="background"`` scores it against a
  pure-background distribution (the other view saw nothing there). Background is not the default:
  a box whose score flickers across the predictor's floor between the views is unmatched only
  because its partner was cut, and against background it scores as the strongest disagreement
  (symmetric KL ~0.5 and more, vs ~0.1 for a genuinely disagreeing matched pair) and dominates the
  image's max. For the same reason the score-unlabeled stage runs the predictor with a floor below
  the scorer's (``predict_floor < score_floor``): a scored box's partner just under the scorer's
  floor is still there to match.
* ``localization`` -- ``1 - v`` per box, ``v`` the certainty-aware box head's localization quality
  (``loc_quality``, Li et al. eq. 4): how unsure the detector is *where* the object is. Needs a
  detector with ``box_head: certainty``. A column like the others, so any score-ranking strategy
  (``topk``, ``prefilter_coreset``, ``uniform_topk``, ``class_balanced``) can use it.
* ``mc_dropout`` -- BALD mutual information per box over T dropout passes:
  ``H(mean_t p_t) - mean_t H(p_t)``.

``unified`` (Elezi's combined score) needs the selection budget, so it is not a column: it is the
``unified`` selection strategy over the ``entropy`` and ``inconsistency`` columns
(see :mod:`activedet.al.selection`).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from activedet.errors import ActivedetError
from activedet.models.types import Detections, ImagePrediction
from activedet.registry import Registry

log = logging.getLogger(__name__)

EPS = 1e-8
Aggregation = Literal["max", "mean", "sum"]
AGGREGATIONS = ("max", "mean", "sum")


# --------------------------------------------------------------------------- math helpers


def normalize(probs: np.ndarray) -> np.ndarray:
    """Rows clipped to [EPS, 1] and renormalised to sum to 1 (float64)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis."""
    p = normalize(probs)
    return -(p * np.log(p)).sum(axis=-1)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis (both smoothed by :func:`normalize`)."""
    p, q = normalize(p), normalize(q)
    return (p * (np.log(p) - np.log(q))).sum(axis=-1)


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return 0.5 * (kl(p, q) + kl(q, p))


def js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (nats, bounded by ln 2)."""
    p, q = normalize(p), normalize(q)
    m = 0.5 * (p + q)
    return 0.5 * (kl(p, m) + kl(q, m))


def mutual_information(mc_probs: np.ndarray) -> np.ndarray:
    """BALD per box from ``[T, N, C + 1]`` samples: ``H(mean_t p_t) - mean_t H(p_t)`` (>= 0)."""
    mc = normalize(mc_probs)
    return np.maximum(entropy(mc.mean(axis=0)) - entropy(mc).mean(axis=0), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, EPS), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one matching: repeatedly take the highest remaining IoU pair >= ``threshold``."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    order = np.argsort(-iou, axis=None, kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in order:
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


# --------------------------------------------------------------------------- base class


class AcquisitionScore:
    """Base acquisition score: floor, aggregation and NaN handling; subclasses score boxes.

    ``needs`` names the optional :class:`ImagePrediction` parts a score requires (``flipped``,
    ``mc_probs``), so the scoring stage asks the predictor for exactly those.
    """

    name = "base"
    needs: frozenset[str] = frozenset()

    def __init__(self, *, score_floor: float = 0.05, aggregation: Aggregation = "max"):
        if aggregation not in AGGREGATIONS:
            raise ActivedetError(f"acquisition score {self.name}: unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
        self.score_floor = float(score_floor)
        self.aggregation = aggregation

    def kept(self, dets: Detections) -> np.ndarray:
        """Indices of the boxes at or above the score floor."""
        return np.flatnonzero(np.asarray(dets.scores, np.float64) >= self.score_floor)

    def box_scores(self, pred: ImagePrediction, keep: np.ndarray) -> np.ndarray:
        """Score of each box in ``keep`` (indices into ``pred.detections``); implemented by subclasses."""
        raise NotImplementedError

    def __call__(self, pred: ImagePrediction) -> float:
        """The image score: aggregated finite box scores; 0.0 when no box passes the floor.

        ``box_scores`` is called even with no kept box (it returns an empty array then), so a
        score may also use boxes of other views (inconsistency: boxes seen only when flipped).
        """
        for part in self.needs:
            if getattr(pred, part) is None:
                raise ActivedetError(f"acquisition score {self.name!r} needs prediction part {part!r}, missing for image {pred.image_id!r}")
        keep = self.kept(pred.detections)
        scores = np.asarray(self.box_scores(pred, keep), np.float64).reshape(-1)
        finite = np.isfinite(scores)
        if not finite.all():
            log.warning("%s: %d non-finite box score(s) ignored in image %s", self.name, int((~finite).sum()), pred.image_id)
            scores = scores[finite]
        if scores.size == 0:
            return 0.0
        if self.aggregation == "max":
            return float(scores.max())
        if self.aggregation == "mean":
            return float(scores.mean())
        return float(scores.sum())


SCORES: Registry[type[AcquisitionScore]] = Registry("acquisition score")


@SCORES.register("entropy")
class EntropyScore(AcquisitionScore):
    """Shannon entropy of each box's class distribution."""

    name = "entropy"

    def box_scores(self, pred: ImagePrediction, keep: np.ndarray) -> np.ndarray:
        if len(keep) == 0:
            return np.empty(0)
        return entropy(np.asarray(pred.detections.class_probs)[keep])


@SCORES.register("inconsistency")
class InconsistencyScore(AcquisitionScore):
    """Divergence between the original and the flipped-back predictions of matched boxes."""

    name = "inconsistency"
    needs = frozenset({"flipped"})

    def __init__(self, *, divergence: Literal["kl", "js"] = "kl", match_iou: float = 0.5,
                 unmatched: Literal["background", "ignore"] = "ignore", **kwargs):
        super().__init__(**kwargs)
        if divergence not in ("kl", "js"):
            raise ActivedetError(f"inconsistency: unknown divergence {divergence!r}; valid: kl, js")
        if unmatched not in ("background", "ignore"):
            raise ActivedetError(f"inconsistency: unknown unmatched policy {unmatched!r}; valid: background, ignore")
        self.divergence = symmetric_kl if divergence == "kl" else js
        self.match_iou = float(match_iou)
        self.unmatched = unmatched

    def box_scores(self, pred: ImagePrediction, keep: np.ndarray) -> np.ndarray:
        orig, flip = pred.detections, pred.flipped
        assert flip is not None  # checked by __call__ via ``needs``
        keep_f = self.kept(flip)
        # match the scored boxes against *every* box of the other view, so a partner just under
        # the floor still counts as a match rather than as a missed detection
        iou_of = box_iou(np.asarray(orig.boxes)[keep], np.asarray(flip.boxes))
        pairs_o = dict(greedy_match(iou_of, self.match_iou))
        iou_fo = box_iou(np.asarray(flip.boxes)[keep_f], np.asarray(orig.boxes))
        pairs_f = dict(greedy_match(iou_fo, self.match_iou))
        p_o, p_f = np.asarray(orig.class_probs), np.asarray(flip.class_probs)
        width = p_o.shape[-1] if p_o.ndim == 2 and p_o.shape[0] else p_f.shape[-1]
        background = np.zeros(width)
        background[0] = 1.0
        out = []
        for r in range(len(keep)):
            if r in pairs_o:
                out.append(float(self.divergence(p_o[keep[r]], p_f[pairs_o[r]])))
            elif self.unmatched == "background":
                out.append(float(self.divergence(p_o[keep[r]], background)))
        if self.unmatched == "background":
            for r in range(len(keep_f)):
                if r not in pairs_f:
                    out.append(float(self.divergence(p_f[keep_f[r]], background)))
        return np.asarray(out, np.float64)


@SCORES.register("localization")
class LocalizationScore(AcquisitionScore):
    """``1 - v`` of each box (``v``: the certainty head's localization quality)."""

    name = "localization"

    def box_scores(self, pred: ImagePrediction, keep: np.ndarray) -> np.ndarray:
        quality = pred.detections.loc_quality
        if quality is None:
            if len(pred.detections) == 0:
                return np.empty(0)
            raise ActivedetError(
                f"acquisition score 'localization' needs localization quality (a detector with preset_options "
                f"box_head: certainty); image {pred.image_id!r} has none"
            )
        return 1.0 - np.clip(np.asarray(quality, np.float64)[keep], 0.0, 1.0)


@SCORES.register("mc_dropout")
class MCDropoutScore(AcquisitionScore):
    """BALD mutual information of each box over T MC-dropout passes."""

    name = "mc_dropout"
    needs = frozenset({"mc_probs"})

    def box_scores(self, pred: ImagePrediction, keep: np.ndarray) -> np.ndarray:
        if len(keep) == 0:
            return np.empty(0)
        mc = np.asarray(pred.mc_probs)
        if mc.ndim != 3 or mc.shape[1] != len(pred.detections):
            raise ActivedetError(
                f"mc_dropout: image {pred.image_id!r}: mc_probs shape {mc.shape} does not match {len(pred.detections)} detections"
            )
        return mutual_information(mc[:, keep])


def build_scorers(names: list[str], *, score_floor: float = 0.05, entropy_aggregation: Aggregation = "max",
                  divergence: Literal["kl", "js"] = "kl", match_iou: float = 0.5,
                  unmatched: Literal["background", "ignore"] = "ignore") -> dict[str, AcquisitionScore]:
    """Instantiate the registered scores in ``names`` with the stage's options."""
    out: dict[str, AcquisitionScore] = {}
    for name in names:
        cls = SCORES.get(name)
        if cls is EntropyScore:
            out[name] = cls(score_floor=score_floor, aggregation=entropy_aggregation)
        elif cls is InconsistencyScore:
            out[name] = cls(score_floor=score_floor, divergence=divergence, match_iou=match_iou, unmatched=unmatched)
        else:
            out[name] = cls(score_floor=score_floor)
    return out
