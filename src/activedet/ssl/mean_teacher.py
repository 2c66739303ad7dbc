"""Online SSL (``mode: mean_teacher``): LabelMatch's re-distribution mean teacher with proposal self-assignment.

Chen et al. 2022 (../shared/papers/chen2022-labelmatch-ssod.md) on this project's detector:

* the student starts from the cycle's teacher (burn-in = the supervised teacher); the *EMA
  teacher* (:func:`ema_update`) is the exponential moving average of the student's weights and
  is what the stage publishes;
* every iteration the EMA teacher predicts the weak view of the batch's pool images (NMS
  applied, :func:`teacher_detections`); :func:`select_pseudo_boxes` keeps class ``c`` boxes
  scoring ``>= t_c`` and marks those ``>= t_c^r`` (or promoted by RPLM: pre-NMS cluster mean
  score and mean IoU ``>= 0.8``) reliable;
* the thresholds are LabelMatch eq. 4-6 (:func:`act_thresholds`), re-estimated every ``K``
  iterations with the current EMA teacher on a seeded random subset of the pool
  (:func:`estimate_act`);
* the student learns from the strong view (same geometry as the weak view, photometric
  augmentation on top): reliable boxes are hard labels (classification + box regression, RPN
  included); uncertain boxes are objectness positives for the RPN but never box-regressed, and
  the student's sampled proposals matched to them get the teacher's box-head class
  distribution on that same proposal as a soft target (:func:`soft_targets`, soft
  cross-entropy, eq. 7-8) instead of the pseudo box's hard class;
* ``L = L_s + lambda_u * L_u``.

:func:`train_mean_teacher` runs it as the train-student-ssl stage (``config.mode ==
"mean_teacher"``) on :func:`activedet.models.train.train_and_commit`; resume restores student,
optimizer, EMA teacher and ACT state (safetensors + JSON).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from activedet import store
from activedet.errors import ActivedetError, ConfigError
from activedet.ssl.augment import StrongParams, strong_transform
from activedet.ssl.filters import _round_half_up, _score_at_rank, dynamic_thresholds, merge_stats

log = logging.getLogger(__name__)

SUP, UNSUP = "sup/", "unsup/"
TEACHER_FILE, ACT_FILE, DYNAMIC_FILE = "ema_teacher.safetensors", "act_state.json", "dynamic_state.json"

#: Unbiased Teacher / LabelMatch: EMA decay 0.9996 over a 180k-iteration schedule
PAPER_DECAY, PAPER_ITERATIONS = 0.9996, 180_000
MIN_DEFAULT_DECAY = 0.9


# --------------------------------------------------------------------------- EMA teacher


def ema_decay_for(iterations: int) -> float:
    """The default EMA decay for a schedule of ``iterations``: the paper's 0.9996 scaled to it.

    ``d = 0.9996 ** (180000 / iterations)`` keeps the paper's ratio of EMA time constant
    (``1 / (1 - d)`` = 2500 iterations) to schedule length (1.4 %): after the whole schedule the
    burn-in weights have the same (negligible) share of the teacher as in the paper. Clamped to
    ``[0.9, 0.9996]``: the floor keeps the teacher averaging over >= ~10 steps on the short
    schedules this project's benchmarks run (a few hundred iterations).
    """
    d = PAPER_DECAY ** (PAPER_ITERATIONS / max(int(iterations), 1))
    return float(min(PAPER_DECAY, max(MIN_DEFAULT_DECAY, d)))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for every floating-point tensor of
    the state dict (parameters and BN statistics); integer buffers (``num_batches_tracked``) are copied."""
    t_state = teacher.state_dict()
    for k, v in student.state_dict().items():
        t = t_state[k]
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(v.detach().to(t.dtype), alpha=1.0 - decay)
        else:
            t.copy_(v)


# --------------------------------------------------------------------------- ACT thresholds


@dataclass
class ACTState:
    """Online thresholds by model label (1..C): ``t_c`` (kept) and ``t_c^r`` (reliable); None: keep none."""

    thresholds: dict[int, float | None]
    reliable: dict[int, float | None]
    refreshed_at: int = 0
    estimation_images: int = 0
    expected: dict[int, float] = field(default_factory=dict)

    def lookups(self, num_classes: int, device) -> tuple[Tensor, Tensor, Tensor]:
        """``[C+1]`` lookups of ``t_c``, ``t_c^r`` (``inf`` where no box is kept; index 0 unused) and box weight (1)."""
        return _lut(self.thresholds, num_classes, device), _lut(self.reliable, num_classes, device), torch.ones(num_classes + 1, device=device)

    def to_json(self) -> dict:
        return {"thresholds": {str(k): v for k, v in self.thresholds.items()},
                "reliable": {str(k): v for k, v in self.reliable.items()},
                "expected": {str(k): v for k, v in self.expected.items()},
                "refreshed_at": self.refreshed_at, "estimation_images": self.estimation_images}

    @classmethod
    def from_json(cls, doc: Mapping) -> ACTState:
        try:
            return cls(
                thresholds={int(k): (None if v is None else float(v)) for k, v in doc["thresholds"].items()},
                reliable={int(k): (None if v is None else float(v)) for k, v in doc["reliable"].items()},
                expected={int(k): float(v) for k, v in doc.get("expected", {}).items()},
                refreshed_at=int(doc["refreshed_at"]), estimation_images=int(doc["estimation_images"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ActivedetError(f"malformed ACT state ({exc})") from None


def _lut(d: Mapping[int, float | None], num_classes: int, device, missing: float = math.inf) -> Tensor:
    """``[C+1]`` tensor of ``d`` by model label (index 0 and None entries: ``missing``)."""
    return torch.tensor([missing] + [missing if d.get(c) is None else float(d[c]) for c in range(1, num_classes + 1)],
                        device=device)


@dataclass
class DynamicState:
    """Li et al.'s online class statistics by model label (1..C) and the thresholds derived from them.

    ``sums[c]`` = ``c_m = sum_j p_j v_j`` and ``counts[c]`` = number of foreground candidates,
    accumulated over the EMA teacher's detections (seed pass + every batch so far); ``thresholds``
    (``tau_m``) and ``weights`` (``alpha_m``) were derived from them at iteration ``refreshed_at``.
    ``updates`` counts the batches accumulated, ``seed_images`` the images of the seed pass.
    """

    sums: dict[int, float]
    counts: dict[int, float]
    thresholds: dict[int, float] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    refreshed_at: int = 0
    updates: int = 0
    seed_images: int = 0

    def lookups(self, num_classes: int, device) -> tuple[Tensor, Tensor, Tensor]:
        """``[C+1]`` lookups of ``tau_m`` (kept), ``tau_m`` again (every kept box is reliable: Li et al.'s
        pseudo-labels are hard labels) and ``alpha_m`` (box weight)."""
        t = _lut(self.thresholds, num_classes, device)
        return t, t, _lut(self.weights, num_classes, device, missing=1.0)

    def add(self, evidence: np.ndarray) -> None:
        """Add ``[2, C]`` evidence (row 0: ``sum p v``, row 1: counts; column ``c - 1`` is label ``c``)."""
        for c in self.sums:
            self.sums[c] += float(evidence[0, c - 1])
            self.counts[c] += float(evidence[1, c - 1])

    def refresh(self, iteration: int, params: Mapping[str, float]) -> None:
        """``tau_m`` and ``alpha_m`` from the current sums (Li eq. 6, :func:`~activedet.ssl.filters.dynamic_thresholds`)."""
        classes = sorted(self.sums)
        tau, alpha, _ = dynamic_thresholds(np.array([self.sums[c] for c in classes]), np.array([self.counts[c] for c in classes]),
                                           **params)
        self.thresholds = {c: float(v) for c, v in zip(classes, tau, strict=True)}
        self.weights = {c: float(v) for c, v in zip(classes, alpha, strict=True)}
        self.refreshed_at = iteration

    def to_json(self) -> dict:
        def keyed(d):
            return {str(k): v for k, v in d.items()}

        return {"sums": keyed(self.sums), "counts": keyed(self.counts), "thresholds": keyed(self.thresholds),
                "weights": keyed(self.weights), "refreshed_at": self.refreshed_at, "updates": self.updates,
                "seed_images": self.seed_images}

    @classmethod
    def from_json(cls, doc: Mapping) -> DynamicState:
        try:
            def ints(key):
                return {int(k): float(v) for k, v in doc[key].items()}

            return cls(sums=ints("sums"), counts=ints("counts"), thresholds=ints("thresholds"), weights=ints("weights"),
                       refreshed_at=int(doc["refreshed_at"]), updates=int(doc["updates"]), seed_images=int(doc["seed_images"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ActivedetError(f"malformed dynamic-threshold state ({exc})") from None


def class_evidence(dets: Iterable[Mapping[str, Tensor]], num_classes: int) -> np.ndarray:
    """``[2, C]``: per class ``sum p * v`` over the detections (row 0) and their number (row 1).

    ``p`` is the detection's score, ``v`` its ``loc_quality`` (certainty head), 1 when absent; a
    detection's class is its label (1..C, column ``label - 1``).
    """
    out = np.zeros((2, num_classes), np.float64)
    for d in dets:
        labels = d["labels"].detach().cpu().numpy().astype(np.int64) - 1
        scores = d["scores"].detach().float().cpu().numpy().astype(np.float64)
        q = d.get("loc_quality")
        v = q.detach().float().cpu().numpy().astype(np.float64) if q is not None else np.ones_like(scores)
        np.add.at(out[0], labels, scores * v)
        np.add.at(out[1], labels, 1.0)
    return out


def act_thresholds(
    scores_by_class: Mapping[int, np.ndarray], labeled_counts: Mapping[int, int], *, num_labeled: int,
    num_unlabeled: int, alpha: float,
) -> tuple[dict[int, float | None], dict[int, float | None], dict[int, float]]:
    """LabelMatch eq. 5-6: ``(t_c, t_c^r, e_c)`` per class.

    ``e_c = n_c * N_u / N_l``; ``t_c`` is the score at rank ``round(e_c)`` (1-based, half up) of
    class ``c``'s post-NMS detections on the ``N_u`` estimation images sorted descending (the last
    one when fewer), ``t_c^r`` the score at rank ``round(alpha% * e_c)``; None where the rank is 0.
    Same rule as the offline ``act`` filter (:func:`activedet.ssl.filters.act`).
    """
    if num_labeled < 1:
        raise ConfigError("mean teacher: ACT needs labeled images (N_l = 0) to fix the expected class distribution")
    t, tr, expected = {}, {}, {}
    for c, n_c in labeled_counts.items():
        ranked = np.sort(np.asarray(scores_by_class.get(c, np.zeros(0)), np.float64))[::-1]
        e = n_c * num_unlabeled / num_labeled
        t[c] = _score_at_rank(ranked, _round_half_up(e))
        tr[c] = _score_at_rank(ranked, _round_half_up(alpha / 100.0 * e))
        expected[c] = e
    return t, tr, expected


def act_subset(pool: Sequence[str], size: int, seed: int) -> list[str]:
    """A seeded random subset of ``size`` pool images (all of them when the pool is smaller)."""
    pool = sorted(pool)
    if len(pool) <= size:
        return pool
    rng = np.random.default_rng(seed)
    return sorted(np.asarray(pool, dtype=object)[rng.choice(len(pool), size=size, replace=False)].tolist())


# --------------------------------------------------------------------------- teacher predictions


def _image_list(model: nn.Module, images: list[Tensor]):
    """``model.transform`` at its deterministic (eval) size, so weak and strong views line up."""
    t = model.transform
    was = t.training
    t.eval()
    try:
        return t(images)[0]
    finally:
        t.train(was)


@torch.no_grad()
def teacher_detections(teacher: nn.Module, images: list[Tensor]):
    """The teacher's post-NMS detections (with pre-NMS clusters) in the transformed frame.

    Returns ``(detections, features, image_list)``; ``teacher`` must be in eval mode with
    ``roi_heads.keep_pre_nms`` set.
    """
    il = _image_list(teacher, images)
    feats = teacher.backbone(il.tensors)
    proposals, _ = teacher.rpn(il, feats)
    dets = teacher.roi_heads(feats, proposals, il.image_sizes)[0]
    return dets, feats, il


def select_pseudo_boxes(det: Mapping[str, Tensor], act: ACTState | DynamicState, num_classes: int, *, rplm: bool = True,
                        rplm_score: float = 0.8, rplm_iou: float = 0.8, class_weights: bool = True) -> dict[str, Tensor]:
    """Pseudo boxes of one image from the teacher's detections and the online thresholds ``act``.

    Kept: ``score >= t_c``; reliable: ``score >= t_c^r``, or (``rplm``) an uncertain box whose
    pre-NMS cluster (the boxes NMS merged into it, itself excluded) has mean score
    ``>= rplm_score`` and mean IoU with it ``>= rplm_iou``. With a :class:`DynamicState`,
    ``t_c = t_c^r = tau_m`` and the box weight is ``alpha_m`` (``class_weights``; else 1).
    Returns a training target: ``boxes``, ``labels``, ``scores``, ``regress`` (reliable), ``soft``
    (uncertain), ``weights``, ``promoted`` (count, RPLM).
    """
    boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
    t, tr, w = act.lookups(num_classes, scores.device)
    keep = scores >= t[labels]
    reliable = keep & (scores >= tr[labels])
    promoted = 0
    if rplm and bool((keep & ~reliable).any()) and "merged_into" in det:
        ms, mi = merge_stats(boxes.cpu().numpy(), det["pre_boxes"].cpu().numpy(), det["pre_scores"].cpu().numpy(),
                             det["merged_into"].cpu().numpy())
        good = torch.from_numpy((np.nan_to_num(ms, nan=-1) >= rplm_score) & (np.nan_to_num(mi, nan=-1) >= rplm_iou)).to(keep.device)
        mine = keep & ~reliable & good
        promoted = int(mine.sum())
        reliable |= mine
    k = torch.where(keep)[0]
    return {
        "boxes": boxes[k].detach(), "labels": labels[k], "scores": scores[k],
        "regress": reliable[k], "soft": ~reliable[k],
        "weights": w[labels[k]] if class_weights else torch.ones(len(k), device=boxes.device),
        "promoted": torch.tensor(promoted),
    }


# --------------------------------------------------------------------------- student losses


@dataclass
class RoISamples:
    """The student's sampled box-head proposals with their targets (one entry per proposal)."""

    proposals: list[Tensor]
    labels: Tensor
    regression_targets: Tensor
    weights: Tensor
    regress: Tensor
    soft: Tensor  # matched to an uncertain pseudo box: soft target from the teacher


def sample_rois(roi_heads, proposals: list[Tensor], targets: list[dict]) -> RoISamples:
    """torchvision's IoU-based proposal sampling and matching (``select_training_samples``) plus
    per-proposal weights, regression mask and the proposals matched to uncertain (``soft``) boxes."""
    props, matched, labels, reg_targets = roi_heads.select_training_samples(proposals, targets)
    weights, regress = roi_heads._sample_weights(targets, matched, labels)
    soft = []
    for t, m, lab in zip(targets, matched, labels, strict=True):
        s = t.get("soft")
        if t["boxes"].shape[0] and s is not None:
            soft.append((lab > 0) & s.to(lab.device, torch.bool)[m])
        else:
            soft.append(torch.zeros_like(lab, dtype=torch.bool))
    soft_all = torch.cat(soft)
    return RoISamples(props, torch.cat(labels), torch.cat(reg_targets), weights, regress & ~soft_all, soft_all)


@torch.no_grad()
def soft_targets(teacher_roi_heads, teacher_features, samples: RoISamples, image_sizes) -> Tensor:
    """Proposal self-assignment (LabelMatch eq. 7): the teacher box head's class distribution
    ``[n_soft, C+1]`` (background included) on each of the student's proposals matched to an
    uncertain pseudo box, pooled from the teacher's features of the weak view."""
    counts = [p.shape[0] for p in samples.proposals]
    per_image = samples.soft.split(counts)
    boxes = [p[s] for p, s in zip(samples.proposals, per_image, strict=True)]
    if sum(b.shape[0] for b in boxes) == 0:
        return torch.zeros((0, 0), device=samples.labels.device)
    return teacher_roi_heads.class_probs_for(teacher_features, boxes, image_sizes)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-row ``-sum_c p_c^t log p_c^s`` (cross-entropy with a distribution as target)."""
    return -(target_probs * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def roi_losses(roi_heads, features, image_sizes, samples: RoISamples, targets_soft: Tensor) -> dict[str, Tensor]:
    """Box-head losses: hard CE + box localization on non-soft proposals (the head's own
    ``sampled_losses``: box regression for the standard head, interval + refinement for the
    certainty head), soft CE against ``targets_soft`` on soft ones; all divided by the number of
    sampled proposals. Soft (uncertain) proposals are never localized (``samples.regress`` is False)."""
    hard_w = torch.where(samples.soft, torch.zeros_like(samples.weights), samples.weights)
    logits, losses = roi_heads.sampled_losses(features, samples.proposals, image_sizes, samples.labels,
                                              samples.regression_targets, hard_w, samples.regress)
    k = max(samples.labels.numel(), 1)
    if samples.soft.any():
        soft = soft_cross_entropy(logits[samples.soft], targets_soft.to(logits.dtype))
        cls_soft = (soft * samples.weights[samples.soft]).sum() / k
    else:
        cls_soft = logits.sum() * 0.0
    return {**losses, "loss_classifier": losses["loss_classifier"] + cls_soft}


def unsupervised_losses(student: nn.Module, teacher: nn.Module, strong: list[Tensor], weak: list[Tensor],
                        act: ACTState | DynamicState, num_classes: int, *, rplm: bool = True, rplm_score: float = 0.8,
                        rplm_iou: float = 0.8, class_weights: bool = True,
                        observe: Callable[[list[dict]], None] | None = None) -> tuple[dict[str, Tensor], list[dict], list]:
    """``L_u`` of one batch of pool images: the teacher labels ``weak``, the student learns ``strong``.

    Returns the student's losses (RPN + box head, LabelMatch eq. 8), the pseudo boxes (transformed
    frame) and the transformed image sizes. ``observe`` gets the teacher's post-NMS detections
    (after they were thresholded: online statistics of this batch apply from the next one).
    """
    dets, feats_t, il_w = teacher_detections(teacher, weak)
    pseudo = [select_pseudo_boxes(d, act, num_classes, rplm=rplm, rplm_score=rplm_score, rplm_iou=rplm_iou,
                                  class_weights=class_weights) for d in dets]
    if observe is not None:
        observe(dets)
    il_s = _image_list(student, strong)
    if list(il_s.image_sizes) != list(il_w.image_sizes):
        raise ActivedetError(f"mean teacher: weak and strong views differ in size ({il_w.image_sizes} vs {il_s.image_sizes})")
    feats_s = student.backbone(il_s.tensors)
    targets = [{k: p[k] for k in ("boxes", "labels", "regress", "soft", "weights")} for p in pseudo]
    proposals, rpn_losses = student.rpn(il_s, feats_s, targets)
    samples = sample_rois(student.roi_heads, proposals, targets)
    soft = soft_targets(teacher.roi_heads, feats_t, samples, il_w.image_sizes)
    losses = {**rpn_losses, **roi_losses(student.roi_heads, feats_s, il_s.image_sizes, samples, soft)}
    return losses, pseudo, list(il_w.image_sizes)


# --------------------------------------------------------------------------- diagnostics


def match_tp(boxes: Tensor, labels: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou: float = 0.5) -> int:
    """True positives: greedy by score, class-aware, each GT box matched at most once at IoU >= ``iou``."""
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return 0
    ious = box_iou(boxes.float(), gt_boxes.float())
    ious[labels[:, None] != gt_labels[None, :]] = -1.0
    taken = torch.zeros(gt_boxes.shape[0], dtype=torch.bool, device=boxes.device)
    tp = 0
    for i in torch.argsort(scores, descending=True).tolist():
        row = ious[i].masked_fill(taken, -1.0)
        j = int(torch.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            tp += 1
    return tp


def batch_stats(pseudo: list[dict], image_sizes, targets: list[dict], num_classes: int) -> dict[str, float]:
    """Per-iteration pseudo-label figures: count per image, reliable share, RPLM promotions and,
    where the targets carry ground truth (``gt_boxes``, simulation), precision / recall at IoU 0.5
    and KL(GT class distribution || pseudo-label class distribution)."""
    n = sum(int(p["labels"].numel()) for p in pseudo)
    rel = sum(int(p["regress"].sum()) for p in pseudo)
    out = {"pseudo_per_image": n / max(len(pseudo), 1), "pseudo_reliable_per_image": rel / max(len(pseudo), 1),
           "rplm_promoted": float(sum(int(p["promoted"]) for p in pseudo))}
    if n:
        out["reliable_share"] = rel / n
    if all("gt_boxes" in t for t in targets) and targets and any(bool(t.get("has_gt", False)) for t in targets):
        from activedet.ssl.quality import _kl

        tp = n_gt = 0
        pc, gc = np.zeros(num_classes), np.zeros(num_classes)
        for p, size, t in zip(pseudo, image_sizes, targets, strict=True):
            original = tuple(t["weak"].shape[-2:])
            boxes = resize_boxes(p["boxes"], size, original)
            tp += match_tp(boxes, p["labels"], p["scores"], t["gt_boxes"], t["gt_labels"])
            n_gt += int(t["gt_labels"].numel())
            pc += np.bincount(p["labels"].cpu().numpy() - 1, minlength=num_classes)[:num_classes]
            gc += np.bincount(t["gt_labels"].cpu().numpy() - 1, minlength=num_classes)[:num_classes]
        if n:
            out["pseudo_precision"] = tp / n
        if n_gt:
            out["pseudo_recall"] = tp / n_gt
        if n and n_gt:
            out["pseudo_class_kl"] = _kl(gc, pc)[0]
    return out


# --------------------------------------------------------------------------- training pieces


class TwoViews(Dataset):
    """Pool images for the mean teacher: ``(strong view, target)`` with the weak view in ``target["weak"]``.

    ``base`` is a :class:`~activedet.models.data.DetectionDataset` whose geometric (weak)
    augmentation both views share; the strong photometric augmentation goes on top. Its boxes
    (ground truth, when the dataset has it) travel as ``gt_boxes`` / ``gt_labels`` for the
    diagnostics only; the training ``boxes`` are empty: the teacher fills them.
    """

    def __init__(self, base: Dataset, params: StrongParams | None):
        self.base = base
        self.transform = strong_transform(params) if params is not None else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        weak, target = self.base[i]
        strong = weak
        if self.transform is not None:
            strong = self.transform(tv_tensors.Image(weak)).as_subclass(Tensor).clamp(0.0, 1.0)
        return strong, {
            "boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "weak": weak,
            "gt_boxes": target["boxes"], "gt_labels": target["labels"], "has_gt": bool(target["labels"].numel()),
            "pseudo": True, "image_id": target["image_id"],
        }


class OnlineThresholds:
    """The mean teacher's thresholding: state (JSON, resumable) and when it changes.

    Two kinds (``mean_teacher.thresholds``): :class:`ACTThresholds` and :class:`DynamicThresholds`.
    ``start`` builds the first state before training (not on resume), ``observe`` sees each
    batch's teacher detections, ``step`` runs after each optimizer step. In a data-parallel job
    every rank holds the same state: what a rank sees is combined over all ranks before it
    changes the state.
    """

    name = ""
    file = ""

    def __init__(self) -> None:
        self.state: ACTState | DynamicState | None = None

    def start(self, iteration: int) -> None:
        raise NotImplementedError

    def observe(self, dets: list[dict]) -> None:
        """See one batch's teacher detections (nothing by default)."""

    def step(self, iteration: int, iterations: int) -> None:
        """After optimizer step ``iteration`` (nothing by default)."""

    def metrics(self, class_names: Sequence[str]) -> dict[str, float]:
        raise NotImplementedError

    def to_json(self) -> dict:
        if self.state is None:
            raise ActivedetError(f"mean teacher: no {self.name} state yet")
        return self.state.to_json()

    def load_json(self, doc: Mapping) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.state = None


class ACTThresholds(OnlineThresholds):
    """LabelMatch's ACT (eq. 4-6): ``estimate(iteration)`` at the start and every ``every`` iterations (0: once)."""

    name, file = "act", ACT_FILE

    def __init__(self, estimate: Callable[[int], ACTState], every: int):
        super().__init__()
        self.estimate, self.every = estimate, every

    def start(self, iteration: int) -> None:
        self.state = self.estimate(iteration)

    def step(self, iteration: int, iterations: int) -> None:
        if self.every > 0 and iteration % self.every == 0 and iteration < iterations:
            self.state = self.estimate(iteration)

    def metrics(self, class_names: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        act = self.state
        if isinstance(act, ACTState):
            for c, name in enumerate(class_names, start=1):
                for key, d in (("t_c", act.thresholds), ("t_c_reliable", act.reliable)):
                    if d.get(c) is not None:
                        out[f"ssl/{key}/{name}"] = float(d[c])
        return out

    def load_json(self, doc: Mapping) -> None:
        self.state = ACTState.from_json(doc)


class DynamicThresholds(OnlineThresholds):
    """Li et al.'s dynamic thresholds (eq. 6) with ``c_m`` accumulated online.

    ``seed(iteration) -> ([2, C] evidence, images)`` is the seed pass of the burn-in teacher (see
    :func:`class_evidence`); after every step the batch's evidence (combined over ranks with
    ``combine``, default: as it is) is added, and every ``every`` iterations ``tau_m`` / ``alpha_m``
    are derived again with ``params`` (tau, gamma1, gamma2, tau_min, tau_max).
    """

    name, file = "dynamic", DYNAMIC_FILE

    def __init__(self, seed: Callable[[int], tuple[np.ndarray, int]], num_classes: int, params: Mapping[str, float], every: int,
                 combine: Callable[[np.ndarray], np.ndarray] | None = None):
        super().__init__()
        self.seed, self.num_classes, self.params, self.every = seed, num_classes, dict(params), every
        self.combine = combine or (lambda x: x)
        self.pending = np.zeros((2, num_classes))

    def start(self, iteration: int) -> None:
        evidence, n = self.seed(iteration)
        classes = range(1, self.num_classes + 1)
        state = DynamicState(sums={c: 0.0 for c in classes}, counts={c: 0.0 for c in classes}, seed_images=n)
        state.add(evidence)
        state.refresh(iteration, self.params)
        self.state = state
        log.info("mean teacher: dynamic thresholds at iteration %d from %d seed images: %s", iteration, n, state.thresholds)

    def observe(self, dets: list[dict]) -> None:
        self.pending = self.pending + class_evidence(dets, self.num_classes)

    def step(self, iteration: int, iterations: int) -> None:
        state = self.state
        if not isinstance(state, DynamicState):
            raise ActivedetError("mean teacher: dynamic thresholds were not seeded before training")
        state.add(self.combine(self.pending))
        state.updates += 1
        self.pending = np.zeros((2, self.num_classes))
        if iteration % self.every == 0:
            state.refresh(iteration, self.params)

    def metrics(self, class_names: Sequence[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        st = self.state
        if isinstance(st, DynamicState):
            for c, name in enumerate(class_names, start=1):
                if c in st.thresholds:
                    out[f"ssl/t_c/{name}"] = st.thresholds[c]
                    out[f"ssl/alpha_m/{name}"] = st.weights[c]
        return out

    def load_json(self, doc: Mapping) -> None:
        self.state = DynamicState.from_json(doc)
        self.pending = np.zeros((2, self.num_classes))

    def reset(self) -> None:
        super().reset()
        self.pending = np.zeros((2, self.num_classes))


class MeanTeacherLoss:
    """``L_s + lambda_u * L_u`` with the EMA teacher (called by :class:`MeanTeacherModule`).

    Labeled images (``pseudo`` False) give the model's own losses (``sup/``); pool images the
    :func:`unsupervised_losses` (``unsup/``, multiplied by ``lambda_u``) under ``thresholds``
    (whose state :class:`MeanTeacherHook` sets before the first call; default: ACT, estimated by
    whoever sets the state). ``last_stats`` holds the batch's pseudo-label figures.
    """

    def __init__(self, teacher: nn.Module, num_classes: int, *, lambda_u: float, rplm: bool, rplm_score: float, rplm_iou: float,
                 thresholds: OnlineThresholds | None = None, class_weights: bool = True):
        self.teacher, self.num_classes, self.lambda_u = teacher, num_classes, lambda_u
        self.rplm, self.rplm_score, self.rplm_iou = rplm, rplm_score, rplm_iou
        self.thresholds = thresholds if thresholds is not None else ACTThresholds(_no_estimate, 0)
        self.class_weights = class_weights
        self.last_stats: dict[str, float] = {}

    def __call__(self, model: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        lab = [i for i, t in enumerate(targets) if not t.get("pseudo", False)]
        unl = [i for i, t in enumerate(targets) if t.get("pseudo", False)]
        if lab:
            losses = model([images[i] for i in lab], [targets[i] for i in lab])
            out.update({SUP + k: v for k, v in losses.items()})
        if unl and self.lambda_u > 0:
            state = self.thresholds.state
            if state is None:
                raise ActivedetError("mean teacher: thresholds were not estimated before training")
            losses, pseudo, sizes = unsupervised_losses(
                model, self.teacher, [images[i] for i in unl], [targets[i]["weak"] for i in unl], state, self.num_classes,
                rplm=self.rplm, rplm_score=self.rplm_score, rplm_iou=self.rplm_iou, class_weights=self.class_weights,
                observe=self.thresholds.observe,
            )
            out.update({UNSUP + k: v * self.lambda_u for k, v in losses.items()})
            self.last_stats = batch_stats(pseudo, sizes, [targets[i] for i in unl], self.num_classes)
        return out


def _no_estimate(iteration: int) -> ACTState:
    raise ActivedetError("mean teacher: no ACT estimator configured")


class MeanTeacherModule(nn.Module):
    """The module the trainer steps: the student (its only submodule) whose ``forward(images,
    targets)`` is the whole mean-teacher loss dict (``loss``; the EMA teacher stays outside, it is
    not trained or synchronised by DDP). Computing ``L_u`` inside ``forward`` keeps it inside
    :class:`~torch.nn.parallel.DistributedDataParallel`'s forward, so its gradients are all-reduced
    like the supervised ones."""

    def __init__(self, student: nn.Module, loss: MeanTeacherLoss):
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        return self.loss(self.student, images, targets)


def state_digest(module: nn.Module) -> str:
    """sha256 over ``module``'s state dict (names, dtypes, shapes, bytes): equal digests, identical weights."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class MeanTeacherHook:
    """Trainer hook (every rank): thresholds before training (unless resumed), after every step the
    EMA update and the thresholds' step, per-iteration MLflow metrics (``ssl/...``); after training
    the EMA teacher's weights go into the trained model (it is what is published).

    Data-parallel: before training rank 0's EMA teacher and threshold state (restored on resume)
    are broadcast; before each EMA update the student's buffers (BN statistics, which each rank
    updates with its own batch) are broadcast from rank 0, so the EMA teacher stays identical on
    every rank; after training the ranks' teacher and threshold-state digests are compared
    (``ema_teacher_sha256``, ``thresholds_sha256`` in ``train.json``).

    Listed before the :class:`~activedet.models.train.ResumeCheckpointer`, so a checkpoint at
    iteration ``i`` holds the teacher and threshold state after step ``i``.
    """

    def __init__(self, loss: MeanTeacherLoss, *, decay: float, class_names: Sequence[str], tracker=None, info: dict | None = None):
        self.loss, self.decay = loss, decay
        self.class_names = list(class_names)
        self.tracker = tracker
        self.info = info  # gets the final threshold state after training (train.json)

    def before_train(self, trainer) -> None:
        self._sync_from_rank0()
        if self.loss.thresholds.state is None:
            self.loss.thresholds.start(trainer.iteration)

    def _sync_from_rank0(self) -> None:
        from activedet.models import distributed

        if not distributed.current().distributed:
            return
        th = self.loss.thresholds
        doc = distributed.broadcast_object(th.to_json() if th.state is not None else None)
        distributed.broadcast_tensors(list(self.loss.teacher.state_dict().values()))
        if doc is None:
            th.reset()
        else:
            th.load_json(doc)

    def after_step(self, trainer, iteration: int, losses: dict) -> None:
        from activedet.models import distributed

        student = _student(trainer.model)
        distributed.broadcast_tensors(list(student.buffers()))
        ema_update(self.loss.teacher, student, self.decay)
        self.loss.thresholds.step(iteration, trainer.iterations)
        (self.tracker or trainer.tracker).log_metrics(self.metrics(), step=iteration)

    def metrics(self) -> dict[str, float]:
        out = {f"ssl/{k}": v for k, v in self.loss.last_stats.items()}
        return out | self.loss.thresholds.metrics(self.class_names)

    def after_train(self, trainer) -> None:
        from activedet.models import distributed

        th = self.loss.thresholds
        doc = th.to_json() if th.state is not None else None
        digests = distributed.all_gather_object(
            (state_digest(self.loss.teacher), hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
        )
        for what, values in (("EMA teacher", [d[0] for d in digests]), ("threshold state", [d[1] for d in digests])):
            if len(set(values)) > 1:
                log.warning("mean teacher: the %s differs across ranks (%s)", what, values)
        _student(trainer.model).load_state_dict(self.loss.teacher.state_dict())
        if self.info is not None and doc is not None:
            self.info[f"final_{th.name}"] = doc
            if len(digests) > 1:  # data-parallel: each rank's digests, for the record
                self.info["ema_teacher_sha256"] = [d[0] for d in digests]
                self.info["thresholds_sha256"] = [d[1] for d in digests]


def _student(model: nn.Module) -> nn.Module:
    """The detector inside the trainer's model (DDP wrapper and/or :class:`MeanTeacherModule`)."""
    model = getattr(model, "module", model)
    return getattr(model, "student", model)


class MeanTeacherResume:
    """The mean teacher's part of a resume checkpoint: EMA teacher weights (safetensors) and the
    threshold state (JSON: ``act_state.json`` or ``dynamic_state.json``), for
    :class:`~activedet.models.train.ResumeCheckpointer` (``extra``)."""

    def __init__(self, loss: MeanTeacherLoss):
        self.loss = loss
        self.initial = {k: v.detach().clone() for k, v in loss.teacher.state_dict().items()}

    def save_files(self, folder: Path) -> dict[str, Path]:
        th = self.loss.thresholds
        if th.state is None:
            return {}
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.loss.teacher.state_dict().items()}
        save_file(state, str(folder / TEACHER_FILE))
        (folder / th.file).write_text(json.dumps(th.to_json(), sort_keys=True))
        return {TEACHER_FILE: folder / TEACHER_FILE, th.file: folder / th.file}

    def restore(self, folder: str) -> None:
        from activedet.models.checkpoint import read_safetensors

        th = self.loss.thresholds
        tensors = read_safetensors(folder, TEACHER_FILE)
        doc = store.read_json(store.join(folder, th.file))
        self.loss.teacher.load_state_dict(tensors)
        th.load_json(doc)

    def reset(self) -> None:
        self.loss.teacher.load_state_dict(self.initial)
        self.loss.thresholds.reset()


@torch.no_grad()
def teacher_pass(teacher: nn.Module, images: Iterable[Tensor], *, batch_size: int = 8, device="cpu") -> Iterator[dict]:
    """The teacher's post-NMS detections (on the CPU) on ``images``, read lazily ``batch_size`` at a time."""
    it = iter(images)
    while batch := [im.to(device) for im in itertools.islice(it, batch_size)]:
        dets, _, _ = teacher_detections(teacher, batch)
        for d in dets:
            yield {k: v.detach().cpu() for k, v in d.items() if k in ("labels", "scores", "loc_quality")}


def scores_by_class(dets: Iterable[Mapping[str, Tensor]], classes: Iterable[int]) -> tuple[dict[int, np.ndarray], int]:
    """``({label: scores}, images)`` of per-image detections (ACT's input)."""
    parts: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    n = 0
    for d in dets:
        n += 1
        lab, sc = d["labels"].numpy(), d["scores"].float().numpy()
        for c in parts:
            parts[c].append(sc[lab == c])
    return {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}, n


def _combined_scores(parts: Sequence[tuple[dict[int, np.ndarray], int]]) -> tuple[dict[int, np.ndarray], int]:
    classes = parts[0][0].keys()
    return {c: np.concatenate([p[0][c] for p in parts]) for c in classes}, sum(p[1] for p in parts)


def _sum_over_ranks(evidence: np.ndarray) -> np.ndarray:
    """Element-wise sum of every rank's array, added in rank order (identical on every rank)."""
    from activedet.models import distributed

    parts = distributed.all_gather_object(np.asarray(evidence, np.float64))
    out = np.zeros_like(parts[0])
    for p in parts:
        out = out + p
    return out


def build_thresholds(config, teacher: nn.Module, dataset, pool: Sequence[str], labeled_counts: Mapping[int, int], *,
                     num_labeled: int, detector, device) -> OnlineThresholds:
    """The :class:`OnlineThresholds` of ``config.mean_teacher.thresholds``, predicting pool
    subsets with ``teacher``; in a data-parallel job each rank predicts its share of each subset
    and the results are combined over ranks."""
    from activedet.models import distributed
    from activedet.models.data import DetectionDataset

    mt = config.mean_teacher
    rank = distributed.current()

    def my_share(ids: Sequence[str]) -> Iterator[Tensor]:
        mine = list(ids)[rank.rank::rank.world_size]
        data = DetectionDataset(dataset, mine, category_ids=detector.category_ids, train=False)
        return (data[j][0] for j in range(len(data)))

    if mt.thresholds == "dynamic":
        dyn = mt.dynamic
        params = dyn.model_dump(include={"tau", "gamma1", "gamma2", "tau_min", "tau_max"})

        def seed(iteration: int) -> tuple[np.ndarray, int]:
            ids = act_subset(pool, dyn.seed_images, config.seed + iteration) if dyn.seed_images > 0 else []
            dets = list(teacher_pass(teacher, my_share(ids), device=device))
            return _sum_over_ranks(class_evidence(dets, detector.num_classes)), len(ids)

        combine = _sum_over_ranks if rank.distributed else None
        return DynamicThresholds(seed, detector.num_classes, params, dyn.update_every, combine=combine)

    def estimate(iteration: int) -> ACTState:
        ids = act_subset(pool, mt.act_images, config.seed + iteration)
        local = scores_by_class(teacher_pass(teacher, my_share(ids), device=device), labeled_counts)
        by_class, n_u = _combined_scores(distributed.all_gather_object(local))
        t, tr, e = act_thresholds(by_class, labeled_counts, num_labeled=num_labeled, num_unlabeled=n_u, alpha=mt.alpha)
        log.info("mean teacher: ACT thresholds at iteration %d on %d pool images: %s", iteration, n_u,
                 {detector.class_names[c - 1]: v for c, v in t.items()})
        return ACTState(t, tr, refreshed_at=iteration, estimation_images=n_u, expected=e)

    return ACTThresholds(estimate, mt.act_every)


def train_mean_teacher(config) -> dict | None:
    """Run the train-student-ssl stage in ``mode: mean_teacher`` (``config``: its ``Config``).

    With ``devices`` > 1 every rank runs this (:mod:`activedet.models.distributed`); rank 0
    returns the result, the others None.
    """
    from activedet.al.ledger import read_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models import distributed
    from activedet.models.checkpoint import load_detector
    from activedet.models.data import DetectionDataset
    from activedet.models.predict import resolve_device
    from activedet.models.presets import check_crop
    from activedet.models.train import data_digest, seed_everything, train_and_commit
    from activedet.ssl.pseudo_labels import split_sets
    from activedet.ssl.student import balanced_batches
    from activedet.tracking import NullTracker, tracker_for

    mt = config.mean_teacher
    dataset = load_dataset(config.dataset_uri)
    ledger, _ = read_ledger(config.ledger_uri)
    labeled, pool = split_sets(dataset, ledger)
    if not labeled:
        raise ActivedetError(f"train-student-ssl: no labeled train images in ledger {config.ledger_uri}")
    if not pool:
        raise ActivedetError(f"train-student-ssl (mean_teacher): no unlabeled train images in ledger {config.ledger_uri}")
    digest = data_digest(config.dataset_uri, labeled + [f"u:{i}" for i in pool])
    device = resolve_device(config.device)
    rank = distributed.init_process_group(device)  # no-op unless this process is one rank of several
    device = distributed.worker_device(device)
    seed_everything(config.seed)
    detector = load_detector(config.teacher_checkpoint_uri, dataset=dataset)
    check_crop(config.crop_size, detector.model, where="train-student-ssl")
    if detector.backend.unsupported.get("ssl.mode mean_teacher"):
        from activedet.errors import ConfigError

        raise ConfigError(f"ssl.mode mean_teacher: not available on the {detector.backend.name} backend (teacher "
                          f"{config.teacher_checkpoint_uri}, preset {detector.preset!r}); use mode offline")
    detector.model.to(device)
    teacher = copy.deepcopy(detector.model).eval()
    teacher.roi_heads.keep_pre_nms = True
    for p in teacher.parameters():
        p.requires_grad_(False)
    decay = mt.ema_decay if mt.ema_decay is not None else ema_decay_for(config.iterations)
    label_of = detector.category_to_label()
    lab_set = set(labeled)
    counts = {label_of[c]: 0 for c in detector.category_ids}
    for i, c in zip(dataset.boxes.column("image_id").to_pylist(), dataset.boxes.column("category_id").to_pylist(), strict=True):
        if i in lab_set and c in label_of:
            counts[label_of[c]] += 1

    tracker = tracker_for(config, run_name="train-student-ssl") if rank.is_main else NullTracker()
    tracker.log_params(
        {k: v for k, v in config.model_dump(mode="json").items() if k not in ("mlflow_tracking_uri", "mlflow_run_id")}
        | {"labeled_images": len(labeled), "pool_images": len(pool), "ema_decay_used": decay, "data_digest": digest}
    )
    thresholds = build_thresholds(config, teacher, dataset, pool, counts, num_labeled=len(labeled), detector=detector, device=device)
    loss = MeanTeacherLoss(teacher, detector.num_classes, lambda_u=config.lambda_u, rplm=mt.rplm,
                           rplm_score=mt.rplm_score, rplm_iou=mt.rplm_iou, thresholds=thresholds,
                           class_weights=config.use_class_weights)

    params = StrongParams(**config.strong_augmentation.model_dump(exclude={"enabled"})) if config.strong_augmentation.enabled else None
    lab_data = DetectionDataset(dataset, labeled, category_ids=detector.category_ids, hflip=config.hflip, scale_jitter=config.scale_jitter,
                                crop_size=config.crop_size)
    pool_data = TwoViews(DetectionDataset(dataset, pool, category_ids=detector.category_ids, hflip=config.hflip,
                                          scale_jitter=config.scale_jitter, crop_size=config.crop_size), params)
    settings = {**mt.model_dump(mode="json"), "mode": "mean_teacher", "ema_decay_used": decay, "lambda_u": config.lambda_u}
    info = {"labeled_images": len(labeled), "pool_images": len(pool), "mean_teacher": settings}
    hook = MeanTeacherHook(loss, decay=decay, class_names=detector.class_names, tracker=tracker, info=info)
    parents = list(config.parent_run_ids) + [p for p in detector.meta.get("parent_run_ids", []) if p not in config.parent_run_ids]
    if tracker.run_id:
        parents.append(tracker.run_id)
    done = train_and_commit(
        config, detector,
        lambda start: balanced_batches(lab_data, pool_data, batch_size=config.batch_size, labeled_fraction=config.labeled_fraction,
                                       seed=config.seed, start_iter=start, num_workers=config.num_workers,
                                       rank=rank.rank, world_size=rank.world_size),
        stage="train-student-ssl", digest=digest, device=device, tracker=tracker,
        extra_hooks=[hook], resume_extra=MeanTeacherResume(loss), train_module=MeanTeacherModule(detector.model, loss),
        training_info=info,
        init_checkpoint_uri=config.teacher_checkpoint_uri, parent_run_ids=parents,
        published_model="ema_teacher", ssl_mode="mean_teacher",
    )
    if done is None:  # not rank 0
        return None
    return {
        "checkpoint_uri": done.checkpoint_uri,
        "iterations": config.iterations,
        "resumed_from": done.resumed_from,
        "final_loss": done.result.final_loss,
        "it_per_s": done.result.it_per_s,
        "labeled_images": len(labeled),
        "pool_images": len(pool),
        "mode": "mean_teacher",
        "published_model": "ema_teacher",
        "ema_decay": decay,
        "thresholds": mt.thresholds,
    }
