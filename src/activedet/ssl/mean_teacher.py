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
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from activedet.models.roi_heads import weighted_fastrcnn_loss
from activedet.ssl.augment import StrongParams, strong_transform
from activedet.ssl.filters import _round_half_up, _score_at_rank, merge_stats

log = logging.getLogger(__name__)

SUP, UNSUP = "sup/", "unsup/"
TEACHER_FILE, ACT_FILE = "ema_teacher.safetensors", "act_state.json"

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

    def tensors(self, num_classes: int, device) -> tuple[Tensor, Tensor]:
        """``[C+1]`` lookups of ``t_c`` and ``t_c^r`` (``inf`` where no box is kept; index 0 unused)."""
        def lut(d: Mapping[int, float | None]) -> Tensor:
            return torch.tensor([math.inf] + [math.inf if d.get(c) is None else float(d[c]) for c in range(1, num_classes + 1)],
                                device=device)

        return lut(self.thresholds), lut(self.reliable)

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


def select_pseudo_boxes(det: Mapping[str, Tensor], act: ACTState, num_classes: int, *, rplm: bool = True,
                        rplm_score: float = 0.8, rplm_iou: float = 0.8) -> dict[str, Tensor]:
    """Pseudo boxes of one image from the teacher's detections and the ACT thresholds.

    Kept: ``score >= t_c``; reliable: ``score >= t_c^r``, or (``rplm``) an uncertain box whose
    pre-NMS cluster (the boxes NMS merged into it, itself excluded) has mean score
    ``>= rplm_score`` and mean IoU with it ``>= rplm_iou``. Returns a training target: ``boxes``,
    ``labels``, ``scores``, ``regress`` (reliable), ``soft`` (uncertain), ``weights`` (1),
    ``promoted`` (count, RPLM).
    """
    boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
    t, tr = act.tensors(num_classes, scores.device)
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
        "regress": reliable[k], "soft": ~reliable[k], "weights": torch.ones(len(k), device=boxes.device),
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
    """Box-head losses: hard CE + box regression on non-soft proposals (``weighted_fastrcnn_loss``),
    soft CE against ``targets_soft`` on soft ones; all divided by the number of sampled proposals."""
    feats = roi_heads.box_head(roi_heads.box_roi_pool(features, samples.proposals, image_sizes))
    logits, box_reg = roi_heads.box_predictor(feats)
    logits = logits.float()
    hard_w = torch.where(samples.soft, torch.zeros_like(samples.weights), samples.weights)
    cls_hard, box_loss = weighted_fastrcnn_loss(logits, box_reg.float(), samples.labels, samples.regression_targets,
                                                hard_w, samples.regress)
    k = max(samples.labels.numel(), 1)
    if samples.soft.any():
        soft = soft_cross_entropy(logits[samples.soft], targets_soft.to(logits.dtype))
        cls_soft = (soft * samples.weights[samples.soft]).sum() / k
    else:
        cls_soft = logits.sum() * 0.0
    return {"loss_classifier": cls_hard + cls_soft, "loss_box_reg": box_loss}


def unsupervised_losses(student: nn.Module, teacher: nn.Module, strong: list[Tensor], weak: list[Tensor],
                        act: ACTState, num_classes: int, *, rplm: bool = True, rplm_score: float = 0.8,
                        rplm_iou: float = 0.8) -> tuple[dict[str, Tensor], list[dict], list]:
    """``L_u`` of one batch of pool images: the teacher labels ``weak``, the student learns ``strong``.

    Returns the student's losses (RPN + box head, LabelMatch eq. 8), the pseudo boxes (transformed
    frame) and the transformed image sizes.
    """
    dets, feats_t, il_w = teacher_detections(teacher, weak)
    pseudo = [select_pseudo_boxes(d, act, num_classes, rplm=rplm, rplm_score=rplm_score, rplm_iou=rplm_iou) for d in dets]
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


class MeanTeacherLoss:
    """A :class:`~activedet.models.train.Trainer` loss: ``L_s + lambda_u * L_u`` with the EMA teacher.

    Labeled images (``pseudo`` False) give the model's own losses (``sup/``); pool images the
    :func:`unsupervised_losses` (``unsup/``, multiplied by ``lambda_u``). ``act`` must be set
    before the first call (:class:`MeanTeacherHook` does); ``last_stats`` holds the batch's
    pseudo-label figures.
    """

    def __init__(self, teacher: nn.Module, num_classes: int, *, lambda_u: float, rplm: bool, rplm_score: float, rplm_iou: float):
        self.teacher, self.num_classes, self.lambda_u = teacher, num_classes, lambda_u
        self.rplm, self.rplm_score, self.rplm_iou = rplm, rplm_score, rplm_iou
        self.act: ACTState | None = None
        self.last_stats: dict[str, float] = {}

    def __call__(self, model: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        lab = [i for i, t in enumerate(targets) if not t.get("pseudo", False)]
        unl = [i for i, t in enumerate(targets) if t.get("pseudo", False)]
        if lab:
            losses = model([images[i] for i in lab], [targets[i] for i in lab])
            out.update({SUP + k: v for k, v in losses.items()})
        if unl and self.lambda_u > 0:
            if self.act is None:
                raise ActivedetError("mean teacher: ACT thresholds were not estimated before training")
            losses, pseudo, sizes = unsupervised_losses(
                model, self.teacher, [images[i] for i in unl], [targets[i]["weak"] for i in unl], self.act, self.num_classes,
                rplm=self.rplm, rplm_score=self.rplm_score, rplm_iou=self.rplm_iou,
            )
            out.update({UNSUP + k: v * self.lambda_u for k, v in losses.items()})
            self.last_stats = batch_stats(pseudo, sizes, [targets[i] for i in unl], self.num_classes)
        return out


class MeanTeacherHook:
    """Trainer hook: ACT estimate before training (unless resumed), after every step the EMA update,
    every ``act_every`` iterations a new ACT estimate, per-iteration MLflow metrics (``ssl/...``);
    after training the EMA teacher's weights go into the trained model (it is what is published).

    Listed before the :class:`~activedet.models.train.ResumeCheckpointer`, so a checkpoint at
    iteration ``i`` holds the teacher and ACT state after step ``i``.
    """

    def __init__(self, loss: MeanTeacherLoss, *, decay: float, act_every: int, estimate: Callable[[int], ACTState],
                 class_names: Sequence[str], tracker=None, info: dict | None = None):
        self.loss, self.decay, self.act_every, self.estimate = loss, decay, act_every, estimate
        self.class_names = list(class_names)
        self.tracker = tracker
        self.info = info  # gets the final ACT state after training (train.json)

    def before_train(self, trainer) -> None:
        if self.loss.act is None:
            self.loss.act = self.estimate(trainer.iteration)

    def after_step(self, trainer, iteration: int, losses: dict) -> None:
        ema_update(self.loss.teacher, _unwrap(trainer.model), self.decay)
        if self.act_every > 0 and iteration % self.act_every == 0 and iteration < trainer.iterations:
            self.loss.act = self.estimate(iteration)
        (self.tracker or trainer.tracker).log_metrics(self.metrics(), step=iteration)

    def metrics(self) -> dict[str, float]:
        out = {f"ssl/{k}": v for k, v in self.loss.last_stats.items()}
        act = self.loss.act
        if act is not None:
            for c, name in enumerate(self.class_names, start=1):
                for key, d in (("t_c", act.thresholds), ("t_c_reliable", act.reliable)):
                    if d.get(c) is not None:
                        out[f"ssl/{key}/{name}"] = float(d[c])
        return out

    def after_train(self, trainer) -> None:
        _unwrap(trainer.model).load_state_dict(self.loss.teacher.state_dict())
        if self.info is not None and self.loss.act is not None:
            self.info["final_act"] = self.loss.act.to_json()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class MeanTeacherResume:
    """The mean teacher's part of a resume checkpoint: EMA teacher weights (safetensors) and ACT
    state (JSON), for :class:`~activedet.models.train.ResumeCheckpointer` (``extra``)."""

    def __init__(self, loss: MeanTeacherLoss):
        self.loss = loss
        self.initial = {k: v.detach().clone() for k, v in loss.teacher.state_dict().items()}

    def save_files(self, folder: Path) -> dict[str, Path]:
        if self.loss.act is None:
            return {}
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.loss.teacher.state_dict().items()}
        save_file(state, str(folder / TEACHER_FILE))
        (folder / ACT_FILE).write_text(json.dumps(self.loss.act.to_json(), sort_keys=True))
        return {TEACHER_FILE: folder / TEACHER_FILE, ACT_FILE: folder / ACT_FILE}

    def restore(self, folder: str) -> None:
        from activedet.models.checkpoint import read_safetensors

        tensors = read_safetensors(folder, TEACHER_FILE)
        act = ACTState.from_json(store.read_json(store.join(folder, ACT_FILE)))
        self.loss.teacher.load_state_dict(tensors)
        self.loss.act = act

    def reset(self) -> None:
        self.loss.teacher.load_state_dict(self.initial)
        self.loss.act = None


def estimate_act(teacher: nn.Module, images: Iterable[Tensor], labeled_counts: Mapping[int, int], *,
                 num_labeled: int, alpha: float, batch_size: int = 8, device="cpu") -> tuple[dict, dict, dict, int]:
    """``(t_c, t_c^r, e_c, N_u)`` from the teacher's post-NMS detections on ``images`` (by model
    label; images are read lazily, ``batch_size`` at a time)."""
    scores: dict[int, list[np.ndarray]] = {c: [] for c in labeled_counts}
    n_u = 0
    it = iter(images)
    while batch := [im.to(device) for im in itertools.islice(it, batch_size)]:
        n_u += len(batch)
        dets, _, _ = teacher_detections(teacher, batch)
        for d in dets:
            lab, sc = d["labels"].cpu().numpy(), d["scores"].float().cpu().numpy()
            for c in scores:
                scores[c].append(sc[lab == c])
    by_class = {c: np.concatenate(v) if v else np.zeros(0) for c, v in scores.items()}
    t, tr, e = act_thresholds(by_class, labeled_counts, num_labeled=num_labeled, num_unlabeled=n_u, alpha=alpha)
    return t, tr, e, n_u


def train_mean_teacher(config) -> dict:
    """Run the train-student-ssl stage in ``mode: mean_teacher`` (``config``: its ``Config``)."""
    from activedet.al.ledger import read_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import head_spec, load_detector
    from activedet.models.data import DetectionDataset
    from activedet.models.predict import resolve_device
    from activedet.models.train import data_digest, seed_everything, train_and_commit
    from activedet.ssl.pseudo_labels import split_sets
    from activedet.ssl.student import balanced_batches
    from activedet.tracking import tracker_for

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
    seed_everything(config.seed)
    detector = load_detector(config.teacher_checkpoint_uri, dataset=dataset)
    if head_spec(detector.model).get("type", "standard") != "standard":
        raise ConfigError("train-student-ssl: mode mean_teacher supports the standard box head only (preset option box_head)")
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

    tracker = tracker_for(config, run_name="train-student-ssl")
    tracker.log_params(
        {k: v for k, v in config.model_dump(mode="json").items() if k not in ("mlflow_tracking_uri", "mlflow_run_id")}
        | {"labeled_images": len(labeled), "pool_images": len(pool), "ema_decay_used": decay, "data_digest": digest}
    )
    loss = MeanTeacherLoss(teacher, detector.num_classes, lambda_u=config.lambda_u, rplm=mt.rplm,
                           rplm_score=mt.rplm_score, rplm_iou=mt.rplm_iou)

    def estimate(iteration: int) -> ACTState:
        subset = act_subset(pool, mt.act_images, config.seed + iteration)
        data = DetectionDataset(dataset, subset, category_ids=detector.category_ids, train=False)
        t, tr, e, n_u = estimate_act(teacher, (data[j][0] for j in range(len(data))), counts, num_labeled=len(labeled),
                                     alpha=mt.alpha, device=device)
        state = ACTState(t, tr, refreshed_at=iteration, estimation_images=n_u, expected=e)
        log.info("mean teacher: ACT thresholds at iteration %d on %d pool images: %s", iteration, n_u,
                 {detector.class_names[c - 1]: v for c, v in t.items()})
        return state

    params = StrongParams(**config.strong_augmentation.model_dump(exclude={"enabled"})) if config.strong_augmentation.enabled else None
    lab_data = DetectionDataset(dataset, labeled, category_ids=detector.category_ids, hflip=config.hflip, scale_jitter=config.scale_jitter)
    pool_data = TwoViews(DetectionDataset(dataset, pool, category_ids=detector.category_ids, hflip=config.hflip,
                                          scale_jitter=config.scale_jitter), params)
    settings = {**mt.model_dump(mode="json"), "mode": "mean_teacher", "ema_decay_used": decay, "lambda_u": config.lambda_u}
    info = {"labeled_images": len(labeled), "pool_images": len(pool), "mean_teacher": settings}
    hook = MeanTeacherHook(loss, decay=decay, act_every=mt.act_every, estimate=estimate, class_names=detector.class_names,
                           tracker=tracker, info=info)
    parents = list(config.parent_run_ids) + [p for p in detector.meta.get("parent_run_ids", []) if p not in config.parent_run_ids]
    if tracker.run_id:
        parents.append(tracker.run_id)
    done = train_and_commit(
        config, detector,
        lambda start: balanced_batches(lab_data, pool_data, batch_size=config.batch_size, labeled_fraction=config.labeled_fraction,
                                       seed=config.seed, start_iter=start, num_workers=config.num_workers),
        stage="train-student-ssl", digest=digest, device=device, tracker=tracker, loss_fn=loss,
        extra_hooks=[hook], resume_extra=MeanTeacherResume(loss),
        training_info=info,
        init_checkpoint_uri=config.teacher_checkpoint_uri, parent_run_ids=parents,
        published_model="ema_teacher", ssl_mode="mean_teacher",
    )
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
    }
