"""Pseudo-label filters: which teacher detections on the unlabeled pool become pseudo-labels.

Every filter is a pure function ``f(candidates, context, **params) -> FilterResult`` registered in
:data:`FILTERS` (a :class:`~activedet.registry.Registry` named "pseudo-label filter"):

* ``candidates`` -- a boxes table (see :mod:`activedet.schema`) of post-NMS teacher detections on
  the pool: ``image_id``, ``x1..y2``, ``category_id``, ``score``, optionally ``class_probs`` and
  ``loc_quality``, and for RPLM the pre-NMS summary columns :data:`MERGE_SCORE` /
  :data:`MERGE_IOU` (see :func:`merge_stats`).
* ``context`` -- :class:`FilterContext`: categories, labeled class counts, ``N_l`` and the pool.

The result holds the kept rows (all input columns plus a ``reliable`` bool column), and per-class
thresholds and loss weights, written next to the pseudo boxes as ``thresholds.json``. Formulas
and defaults: ``../shared/METHODS.md`` section 2 and the papers cited per filter.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from activedet.errors import ConfigError
from activedet.registry import Registry

log = logging.getLogger(__name__)

#: candidate columns with the RPLM statistics of the pre-NMS boxes merged into each kept box
MERGE_SCORE = "merge_mean_score"
MERGE_IOU = "merge_mean_iou"


@dataclass(frozen=True)
class FilterContext:
    """What a filter may know besides the candidates.

    * ``category_ids`` -- dataset category ids (ascending order is the class_probs order);
    * ``labeled_counts`` -- ``{category_id: n_c}``, ground-truth boxes per class in the labeled set;
    * ``num_labeled_images`` -- ``N_l``;
    * ``pool_image_ids`` -- every pool image (``N_u`` of them), including those without detections;
    * ``seed`` -- for filters that estimate on a random subset.
    """

    category_ids: Sequence[int]
    labeled_counts: Mapping[int, int] = field(default_factory=dict)
    num_labeled_images: int = 0
    pool_image_ids: Sequence[str] = ()
    seed: int = 0

    @property
    def num_pool_images(self) -> int:
        return len(self.pool_image_ids)


@dataclass(frozen=True)
class ClassStats:
    """Per-class outcome of a filter (JSON-friendly; ``None`` = not applicable / nothing kept)."""

    threshold: float | None
    weight: float = 1.0
    reliable_threshold: float | None = None
    candidates: int = 0
    kept: int = 0
    reliable: int = 0


@dataclass(frozen=True)
class FilterResult:
    """Kept candidates (with a ``reliable`` column) and per-class thresholds and weights."""

    boxes: pa.Table
    per_class: dict[int, ClassStats]
    filter: str
    params: dict
    info: dict = field(default_factory=dict)

    @property
    def weights(self) -> dict[int, float]:
        return {c: s.weight for c, s in self.per_class.items()}

    @property
    def thresholds(self) -> dict[int, float | None]:
        return {c: s.threshold for c, s in self.per_class.items()}

    def to_json(self) -> dict:
        """The ``thresholds.json`` document (keys of ``classes`` are category ids as strings)."""
        return {
            "filter": self.filter,
            "params": dict(self.params),
            "classes": {str(c): vars(s).copy() for c, s in sorted(self.per_class.items())},
            "kept": self.boxes.num_rows,
            "reliable": int(np.asarray(self.boxes.column("reliable").to_numpy(zero_copy_only=False)).sum())
            if self.boxes.num_rows
            else 0,
            **({"info": self.info} if self.info else {}),
        }


#: the ``dynamic`` filter's parameters (Li et al.: tau 0.7, gamma1 0.05, gamma2 0.6, clip to [0.4, 0.9]);
#: also the defaults of the mean teacher's online dynamic thresholds
DYNAMIC_DEFAULTS: dict[str, float] = {"tau": 0.7, "gamma1": 0.05, "gamma2": 0.6, "tau_min": 0.4, "tau_max": 0.9}

FilterFn = Callable[..., FilterResult]
FILTERS: Registry[FilterFn] = Registry("pseudo-label filter")


#: parameters every filter accepts: the localization-quality gate (see :func:`loc_quality_gate`)
GATE_PARAMS = ("min_loc_quality", "below_loc_quality")


def apply_filter(name: str, candidates: pa.Table, context: FilterContext, params: Mapping | None = None) -> FilterResult:
    """Apply registered filter ``name`` with ``params``; unknown parameter names are a ConfigError.

    The gate parameters (:data:`GATE_PARAMS`) are accepted by every filter and applied to its
    result by :func:`loc_quality_gate`."""
    fn = FILTERS.get(name)
    params = dict(params or {})
    gate = {k: params.pop(k) for k in GATE_PARAMS if k in params}
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("candidates", "context")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"filter {name!r}: unknown parameter(s) {unknown}; valid: {accepted + list(GATE_PARAMS)}")
    return loc_quality_gate(fn(candidates, context, **params), **gate)


def loc_quality_gate(result: FilterResult, *, min_loc_quality: float = 0.0, below_loc_quality: str = "drop") -> FilterResult:
    """Gate a filter's kept boxes on localization quality ``v`` (the ``loc_quality`` column).

    Kept boxes with ``v < min_loc_quality`` are dropped (``below_loc_quality="drop"``) or kept as
    uncertain (``"uncertain"``: classification loss only, no box regression -- the class is
    trusted, the box is not). Boxes without a ``v`` (null: standard head) pass. ``0`` = off.
    """
    _check_unit_interval("min_loc_quality", min_loc_quality, allow_zero=True)
    if below_loc_quality not in ("drop", "uncertain"):
        raise ConfigError(f"below_loc_quality must be 'drop' or 'uncertain', got {below_loc_quality!r}")
    if min_loc_quality <= 0:
        return result
    boxes = result.boxes
    params = {**result.params, "min_loc_quality": min_loc_quality, "below_loc_quality": below_loc_quality}
    if "loc_quality" not in boxes.column_names or not boxes.num_rows:
        return FilterResult(boxes, result.per_class, result.filter, params, result.info)
    q = _column(boxes, "loc_quality")
    low = np.isfinite(q) & (q < min_loc_quality)
    info = {**result.info, "loc_quality_gated": int(low.sum())}
    if below_loc_quality == "drop":
        boxes = boxes.filter(pa.array(~low))
    else:
        reliable = np.asarray(boxes.column("reliable").to_numpy(zero_copy_only=False), bool) & ~low
        boxes = boxes.set_column(boxes.schema.get_field_index("reliable"), "reliable", pa.array(reliable, pa.bool_()))
    per_class = {}
    cats = _column(boxes, "category_id", np.int64)
    rel = np.asarray(boxes.column("reliable").to_numpy(zero_copy_only=False), bool)
    for c, st in result.per_class.items():
        per_class[c] = ClassStats(st.threshold, st.weight, st.reliable_threshold, st.candidates,
                                  int((cats == c).sum()), int((rel & (cats == c)).sum()))
    return FilterResult(boxes, per_class, result.filter, params, info)


# --------------------------------------------------------------------------- helpers


def _column(table: pa.Table, name: str, dtype=np.float64) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def _finish(
    candidates: pa.Table,
    keep: np.ndarray,
    reliable: np.ndarray,
    per_class: dict[int, dict],
    name: str,
    params: dict,
    info: dict | None = None,
) -> FilterResult:
    """Select kept rows, add ``reliable`` and count per class."""
    cats = _column(candidates, "category_id", np.int64) if candidates.num_rows else np.zeros(0, np.int64)
    table = candidates
    if "reliable" in table.column_names:
        table = table.drop_columns(["reliable"])
    table = table.append_column("reliable", pa.array(np.asarray(reliable, bool), pa.bool_()))
    table = table.filter(pa.array(np.asarray(keep, bool)))
    stats = {}
    for c, values in per_class.items():
        in_class = cats == c
        stats[c] = ClassStats(
            candidates=int(in_class.sum()),
            kept=int((keep & in_class).sum()),
            reliable=int((keep & reliable & in_class).sum()),
            **values,
        )
    return FilterResult(boxes=table, per_class=stats, filter=name, params=params, info=info or {})


def _check_unit_interval(name: str, value: float, *, allow_zero: bool = False) -> None:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value <= 1) or not math.isfinite(value):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(f"{name} must be in {interval}, got {value}")


def _round_half_up(x: float) -> int:
    # k% of n and n_c * N_u / N_l are rarely integers; round half up (not banker's rounding), and
    # shave float noise such as 0.3 * 10 = 3.0000000000000004.
    return int(math.floor(round(x, 9) + 0.5))


def _sorted_scores_desc(scores: np.ndarray) -> np.ndarray:
    return np.sort(scores)[::-1]


# --------------------------------------------------------------------------- filters


@FILTERS.register("fixed")
def fixed(candidates: pa.Table, context: FilterContext, *, tau: float = 0.99) -> FilterResult:
    """Class-agnostic threshold (Elezi et al.): keep ``score >= tau``; every kept box is reliable."""
    _check_unit_interval("fixed filter: tau", tau)
    scores = _column(candidates, "score")
    keep = scores >= tau
    per_class = {c: {"threshold": float(tau)} for c in context.category_ids}
    return _finish(candidates, keep, np.ones_like(keep), per_class, "fixed", {"tau": tau})


@FILTERS.register("per_class_topk")
def per_class_topk(candidates: pa.Table, context: FilterContext, *, k: float = 20.0) -> FilterResult:
    """The ``k%`` most confident candidates of each class (Elezi et al. suppl. Table 5a).

    A class with ``n`` candidates keeps ``round_half_up(k * n / 100)`` of them by descending score
    (ties broken by table order); its threshold is the lowest kept score.
    """
    if not (0 < k <= 100):
        raise ConfigError(f"per_class_topk filter: k must be a percentage in (0, 100], got {k}")
    scores = _column(candidates, "score")
    cats = _column(candidates, "category_id", np.int64)
    keep = np.zeros(len(scores), bool)
    per_class = {}
    for c in context.category_ids:
        idx = np.flatnonzero(cats == c)
        n_keep = _round_half_up(k * len(idx) / 100.0)
        order = idx[np.argsort(-scores[idx], kind="stable")][:n_keep]
        keep[order] = True
        per_class[c] = {"threshold": float(scores[order[-1]]) if n_keep else None}
    return _finish(candidates, keep, np.ones_like(keep), per_class, "per_class_topk", {"k": k})


@FILTERS.register("dynamic")
def dynamic(
    candidates: pa.Table,
    context: FilterContext,
    *,
    tau: float = DYNAMIC_DEFAULTS["tau"],
    gamma1: float = DYNAMIC_DEFAULTS["gamma1"],
    gamma2: float = DYNAMIC_DEFAULTS["gamma2"],
    tau_min: float = DYNAMIC_DEFAULTS["tau_min"],
    tau_max: float = DYNAMIC_DEFAULTS["tau_max"],
    use_loc_quality: bool = True,
) -> FilterResult:
    """Dynamic per-class thresholds and loss weights (Li et al. 2021, eq. 6).

    Over the candidates of class ``m`` (the teacher's post-NMS detections with that top class),
    ``c_m = sum_j p_j * v_j`` with ``v`` the ``loc_quality`` column (1 when absent or null);
    ``n_bar`` is the mean number of candidates per class over all ``C`` classes. Then
    ``tau_m = clip((c_m / n_bar) ** gamma1 * tau, tau_min, tau_max)`` filters class ``m``
    (``score >= tau_m``) and ``alpha_m = (n_bar / c_m) ** gamma2`` is its loss weight. A class
    with no candidates gets ``tau_m = tau_min`` (the limit of the formula) and ``alpha_m = 1``
    (nothing to weight). ``use_loc_quality=False`` takes ``v = 1`` for every box (Li et al.'s
    ablation; what a head without localization quality gives).
    """
    params = {"tau": tau, "gamma1": gamma1, "gamma2": gamma2, "tau_min": tau_min, "tau_max": tau_max}
    check_dynamic_params(**params)
    if not isinstance(use_loc_quality, bool):
        raise ConfigError(f"dynamic filter: use_loc_quality must be true or false, got {use_loc_quality!r}")
    scores = _column(candidates, "score")
    cats = _column(candidates, "category_id", np.int64)
    quality = np.ones_like(scores)
    if use_loc_quality and "loc_quality" in candidates.column_names:
        q = _column(candidates, "loc_quality")
        quality = np.where(np.isfinite(q), q, 1.0)
    classes = list(context.category_ids)
    counts = np.array([(cats == c).sum() for c in classes], dtype=np.float64)
    c_m = np.array([(scores[cats == c] * quality[cats == c]).sum() for c in classes], dtype=np.float64)
    tau_m, alpha_m, n_bar = dynamic_thresholds(c_m, counts, **params)
    keep = np.zeros(len(scores), bool)
    per_class = {}
    for i, c in enumerate(classes):
        keep |= (cats == c) & (scores >= tau_m[i])
        per_class[c] = {"threshold": float(tau_m[i]), "weight": float(alpha_m[i])}
    return _finish(candidates, keep, np.ones_like(keep), per_class, "dynamic", {**params, "use_loc_quality": use_loc_quality},
                   {"n_bar": n_bar})


def check_dynamic_params(*, tau: float, gamma1: float, gamma2: float, tau_min: float, tau_max: float) -> None:
    """ConfigError unless ``tau``, ``tau_min``, ``tau_max`` are in (0, 1], ``tau_min <= tau_max`` and the gammas >= 0."""
    _check_unit_interval("dynamic filter: tau", tau)
    _check_unit_interval("dynamic filter: tau_min", tau_min)
    _check_unit_interval("dynamic filter: tau_max", tau_max)
    if tau_min > tau_max:
        raise ConfigError(f"dynamic filter: tau_min {tau_min} > tau_max {tau_max}")
    if gamma1 < 0 or gamma2 < 0:
        raise ConfigError(f"dynamic filter: gamma1 and gamma2 must be >= 0, got {gamma1}, {gamma2}")


def dynamic_thresholds(
    c_m: np.ndarray, counts: np.ndarray, *, tau: float, gamma1: float, gamma2: float, tau_min: float, tau_max: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Li et al. eq. 6 for all ``C`` classes at once: ``(tau_m [C], alpha_m [C], n_bar)``.

    ``c_m [C]`` = ``sum_j p_j v_j`` per class, ``counts [C]`` = foreground candidates per class
    (``n_bar`` = their mean). ``tau_m = clip((c_m / n_bar) ** gamma1 * tau, tau_min, tau_max)``,
    ``alpha_m = (n_bar / c_m) ** gamma2``; a class with ``c_m = 0`` (or ``n_bar = 0``) gets
    ``tau_min`` and weight 1. The offline ``dynamic`` filter and the mean teacher's online
    thresholds (:mod:`activedet.ssl.mean_teacher`) both use it.
    """
    c_m = np.asarray(c_m, np.float64)
    counts = np.asarray(counts, np.float64)
    n_bar = float(counts.mean()) if counts.size else 0.0
    ok = (c_m > 0) & (n_bar > 0)
    safe = np.where(ok, c_m, 1.0)
    tau_m = np.where(ok, np.clip((safe / max(n_bar, 1e-300)) ** gamma1 * tau, tau_min, tau_max), float(tau_min))
    alpha_m = np.where(ok, (max(n_bar, 1e-300) / safe) ** gamma2, 1.0)
    return tau_m, alpha_m, n_bar


@FILTERS.register("act")
def act(
    candidates: pa.Table,
    context: FilterContext,
    *,
    alpha: float = 20.0,
    subset_size: int = 10000,
    rplm: bool = False,
    rplm_score: float = 0.8,
    rplm_iou: float = 0.8,
) -> FilterResult:
    """Adaptive label-distribution-aware thresholds (LabelMatch, Chen et al. 2022, eq. 5-6).

    Class ``c`` with ``n_c`` labeled boxes is expected ``e_c = n_c * N_u / N_l`` times in the pool.
    ``t_c`` is the score at rank ``round(e_c)`` (1-based) among class-``c`` candidates sorted by
    descending score, ``t_c^r`` the score at rank ``round(alpha% * e_c)``. Boxes with
    ``score >= t_c`` are kept; those with ``score >= t_c^r`` are reliable, the rest uncertain. A
    class expected fewer times than it was detected keeps all its candidates; one expected 0
    times keeps none. When the pool has more than ``subset_size`` images, the thresholds are
    estimated on a random (seeded) subset of ``subset_size`` images (``N_u`` = the subset size)
    and applied to the whole pool.

    RPLM (``rplm=True``): an uncertain box whose merged pre-NMS boxes have mean score
    ``>= rplm_score`` and mean IoU with it ``>= rplm_iou`` becomes reliable; needs the
    :data:`MERGE_SCORE` / :data:`MERGE_IOU` columns.
    """
    if not (0 <= alpha <= 100):
        raise ConfigError(f"act filter: alpha must be a percentage in [0, 100], got {alpha}")
    if subset_size < 1:
        raise ConfigError(f"act filter: subset_size must be >= 1, got {subset_size}")
    _check_unit_interval("act filter: rplm_score", rplm_score, allow_zero=True)
    _check_unit_interval("act filter: rplm_iou", rplm_iou, allow_zero=True)
    if context.num_labeled_images < 1:
        raise ConfigError("act filter: needs labeled images (N_l = 0) to fix the expected class distribution")
    if rplm and not {MERGE_SCORE, MERGE_IOU} <= set(candidates.column_names):
        raise ConfigError(
            f"act filter: rplm needs pre-NMS statistics ({MERGE_SCORE}, {MERGE_IOU}); "
            "the teacher's predictions did not include pre-NMS candidates"
        )
    scores = _column(candidates, "score")
    cats = _column(candidates, "category_id", np.int64)
    image_ids = np.asarray(candidates.column("image_id").to_pylist(), dtype=object)

    pool = list(context.pool_image_ids) or sorted(set(image_ids.tolist()))
    n_u = len(pool)
    estimate = np.ones(len(scores), bool)
    if n_u > subset_size:
        rng = np.random.default_rng(context.seed)
        subset = set(np.asarray(pool, dtype=object)[rng.choice(n_u, size=subset_size, replace=False)].tolist())
        estimate = np.array([i in subset for i in image_ids], bool)
        n_u = subset_size
        log.info("act filter: estimating thresholds on %d of %d pool images", subset_size, len(pool))

    keep = np.zeros(len(scores), bool)
    reliable = np.zeros(len(scores), bool)
    per_class = {}
    for c in context.category_ids:
        in_class = cats == c
        ranked = _sorted_scores_desc(scores[in_class & estimate])
        expected = context.labeled_counts.get(c, 0) * n_u / context.num_labeled_images
        t_c = _score_at_rank(ranked, _round_half_up(expected))
        t_r = _score_at_rank(ranked, _round_half_up(alpha / 100.0 * expected))
        if t_c is not None:
            keep |= in_class & (scores >= t_c)
        if t_r is not None:
            reliable |= in_class & (scores >= t_r)
        per_class[c] = {"threshold": t_c, "reliable_threshold": t_r, "expected": expected}
    reliable &= keep
    promoted = 0
    if rplm:
        mean_score = _column(candidates, MERGE_SCORE)
        mean_iou = _column(candidates, MERGE_IOU)
        mine = keep & ~reliable & (np.nan_to_num(mean_score, nan=-1) >= rplm_score) & (np.nan_to_num(mean_iou, nan=-1) >= rplm_iou)
        promoted = int(mine.sum())
        reliable |= mine
    params = {"alpha": alpha, "subset_size": subset_size, "rplm": rplm, "rplm_score": rplm_score, "rplm_iou": rplm_iou}
    info = {
        "estimation_images": n_u,
        "rplm_promoted": promoted,
        "expected": {str(c): d.pop("expected") for c, d in per_class.items()},
    }
    return _finish(candidates, keep, reliable, per_class, "act", params, info)


def _score_at_rank(ranked_desc: np.ndarray, rank: int) -> float | None:
    """Score at 1-based ``rank`` (the last one when fewer candidates); None when ``rank`` is 0."""
    if rank <= 0 or len(ranked_desc) == 0:
        return None
    return float(ranked_desc[min(rank, len(ranked_desc)) - 1])


# --------------------------------------------------------------------------- RPLM statistics


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def merge_stats(kept_boxes: np.ndarray, pre_boxes: np.ndarray, pre_scores: np.ndarray, merged_into: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RPLM statistics per kept box: mean score and mean IoU of the pre-NMS boxes NMS merged into it.

    ``merged_into[i]`` is the index of the kept box that pre-NMS candidate ``i`` was suppressed by
    (or is; -1 when dropped otherwise). The candidate identical to the kept box itself is left
    out (LabelMatch: "the IoU between the suppressed boxes and the selected box"); a kept box
    that suppressed nothing gets NaN, i.e. it is never promoted.
    """
    kept_boxes = np.asarray(kept_boxes, np.float64).reshape(-1, 4)
    pre_boxes = np.asarray(pre_boxes, np.float64).reshape(-1, 4)
    pre_scores = np.asarray(pre_scores, np.float64).reshape(-1)
    merged_into = np.asarray(merged_into, np.int64).reshape(-1)
    mean_score = np.full(len(kept_boxes), np.nan)
    mean_iou = np.full(len(kept_boxes), np.nan)
    for k in range(len(kept_boxes)):
        idx = np.flatnonzero(merged_into == k)
        if not len(idx):
            continue
        ious = box_iou(pre_boxes[idx], kept_boxes[k : k + 1])[:, 0]
        self_idx = np.flatnonzero(np.all(np.isclose(pre_boxes[idx], kept_boxes[k]), axis=1))
        mask = np.ones(len(idx), bool)
        if len(self_idx):
            mask[self_idx[np.argmax(pre_scores[idx][self_idx])]] = False  # the kept box itself
        if mask.any():
            mean_score[k] = pre_scores[idx][mask].mean()
            mean_iou[k] = ious[mask].mean()
    return mean_score, mean_iou
