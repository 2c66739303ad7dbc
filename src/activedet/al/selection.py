"""Batch selection strategies (registry ``STRATEGIES``, kind "selection strategy").

A strategy receives a :class:`SelectionInput` -- the pool (unlabeled image ids, sorted), the
budget, a seed, the per-image scores aligned to the pool, the dataset's images table and the
embeddings of the labeled (and pending) images -- and returns the chosen ids in rank order with
the score each was chosen by. :func:`select` wraps every strategy with the shared rules:

* only pool images can come out, each at most once (checked, not trusted);
* an empty pool gives an empty selection (the select-batch stage reports ``exhausted``, so a
  pipeline loop can stop gracefully instead of failing);
* a budget larger than the pool selects the whole pool (logged), still in strategy rank order;
* everything random draws from ``numpy.random.default_rng(seed)``: same inputs, same batch.

Score columns: higher means more informative. NaN scores rank last (logged).

Strategies:

``random``         seeded random sample.
``uniform``        every n-th frame of each sequence (Mittal's time-based baseline): within a
                   sequence the *pool* frames are ordered by ``frame_index`` and positions
                   0, n, 2n, ... are candidates (images without a sequence are one-frame sequences).
                   ``uniform_n`` unset: n = max(1, pool // budget), which yields >= budget
                   candidates; surplus candidates are thinned evenly in (sequence, frame) order,
                   and too few (explicit n) are topped up evenly from the other pool frames.
``topk``           the ``budget`` highest values of ``score``.
``coreset``        k-center greedy over ``embedding`` with labeled + pending images as initial
                   centers (:func:`activedet.al.coreset.k_center_greedy`); rank = pick order,
                   score = distance to the nearest center when picked.
``uniform_topk``   ``uniform`` candidates (n = ``uniform_n``, default 5) then ``topk`` among them
                   (Mittal's Uniform@5 + Entropy); too few candidates: topped up by score.
``prefilter_coreset``  the top ``prefilter_factor * budget`` by ``score``, then k-center among them
                   (diversity among the uncertain).
``unified``        Elezi's combined score: the top ``unified_factor * budget`` by ``entropy``,
                   ranked by ``inconsistency`` (score = inconsistency).
``class_balanced`` equal quotas per predicted class: classes (from ``pred_classes``) take turns,
                   rarest in the pool first, each taking its highest-``score`` image not yet
                   taken; when every class list is exhausted, the rest is filled by ``score``.
``auto``           chooses per cycle along Mittal et al.'s Table 6 axes, from the pool's measured
                   redundancy (:mod:`activedet.al.redundancy`: share of images with a near-duplicate
                   in embedding space, at the pool's own other-sequence distance scale), the labeled
                   share and the cycle model's held-out AP50 (``model_ap50``, evaluate's): while the
                   model is too weak for its scores to mean anything (AP50 < ``auto_min_ap50``)
                   ``auto_low_budget_strategy`` (``random``); else ``auto_redundant_strategy``
                   (``unified``) on a redundant pool (share >= ``auto_redundant_at``); on a diverse
                   one ``auto_low_budget_strategy`` while under ``auto_low_budget_pct`` % is labeled,
                   else ``auto_diverse_strategy`` (``topk`` of ``score``: single-sample uncertainty).
                   The defaults are the project's measurement, not the paper's (see docs/al.md).
                   The measurement and the choice are in :attr:`Picked.info` (select-batch logs
                   them and writes them to selection.json).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.al.coreset import k_center_greedy
from activedet.errors import ActivedetError
from activedet.registry import Registry

log = logging.getLogger(__name__)

#: the table select-batch commits (schema.SELECTION), read back by the oracle and the label export
SELECTION_FILE = "selection.parquet"


def read_selection(uri: str) -> pa.Table:
    """Read and validate a committed selection (select-batch's output prefix)."""
    return schema.validate_selection(store.read_output_table(uri, SELECTION_FILE), where=store.join(uri, SELECTION_FILE))


@dataclass(frozen=True)
class SelectionParams:
    """Strategy options (see the module docstring for who uses which)."""

    score: str = "entropy"
    uniform_n: int | None = None
    prefilter_factor: float = 3.0
    unified_factor: float = 2.0
    device: str = "auto"
    auto_redundant_at: float = 0.5
    auto_low_budget_pct: float = 1.0
    auto_near_dup_ratio: float = 0.5
    auto_redundant_strategy: str = "unified"
    auto_diverse_strategy: str = "topk"
    auto_low_budget_strategy: str = "random"
    auto_min_ap50: float = 0.2

    @classmethod
    def from_strategy_params(cls, strategy_params: Mapping[str, Any]) -> SelectionParams:
        """The params a mapping sets (an experiment's ``acquisition.strategy_params``, or a dumped
        select-batch config); other keys are ignored here: select-batch's config validates them at load time."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in strategy_params.items() if k in known})

    def auto_candidates(self) -> tuple[str, ...]:
        """The strategies ``auto`` may run (what score-unlabeled must compute columns for)."""
        return tuple(dict.fromkeys((self.auto_low_budget_strategy, self.auto_redundant_strategy, self.auto_diverse_strategy)))


@dataclass(frozen=True)
class SelectionInput:
    """What a strategy sees. ``scores`` rows may cover more than the pool (e.g. labeled images
    with embeddings); lookups go by image_id."""

    pool: list[str]
    budget: int
    seed: int = 0
    scores: pa.Table | None = None
    images: pa.Table | None = None
    labeled: list[str] = field(default_factory=list)
    params: SelectionParams = field(default_factory=SelectionParams)
    model_ap50: float | None = None  # the scoring model's held-out AP50 (evaluate's, 0-1); None = not known

    def _rows(self, ids: list[str], what: str) -> np.ndarray:
        if self.scores is None:
            raise ActivedetError(f"selection needs a scores table ({what}); pass scores_uri")
        index = {iid: k for k, iid in enumerate(self.scores.column("image_id").to_pylist())}
        rows = np.array([index.get(i, -1) for i in ids], np.int64)
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows, strict=True) if r < 0]
            raise ActivedetError(f"scores table has no row for {len(missing)} image(s) ({what}), e.g. {missing[0]!r}")
        return rows

    def column(self, name: str, ids: list[str] | None = None) -> np.ndarray:
        """Float64 values of score column ``name`` for ``ids`` (default: the pool)."""
        ids = self.pool if ids is None else ids
        if name == "unified":
            raise ActivedetError("'unified' is not a score column: use strategy 'unified' (top unified_factor * budget "
                                 "by entropy, ranked by inconsistency)")
        if self.scores is None or name not in self.scores.column_names:
            have = [] if self.scores is None else [c for c in self.scores.column_names if c not in ("image_id", "embedding", "pred_classes")]
            raise ActivedetError(f"selection needs score column {name!r}; the scores table has {have}")
        rows = self._rows(ids, f"column {name!r}")
        values = self.scores.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        return values[rows] if len(rows) else np.empty(0)

    def embeddings(self, ids: list[str]) -> np.ndarray:
        """``[len(ids), d]`` float32 embeddings from the scores table."""
        if self.scores is None or "embedding" not in self.scores.column_names:
            raise ActivedetError("selection needs embeddings: score with 'embedding' in scores (and include_labeled for core-set)")
        col = self.scores.column("embedding").combine_chunks()
        dim = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)  # no second copy at 10^6 x d
        rows = self._rows(ids, "embedding")
        return flat[rows] if len(rows) else np.empty((0, dim), np.float32)

    def pred_classes(self, ids: list[str]) -> list[list[int]]:
        if self.scores is None or "pred_classes" not in self.scores.column_names:
            raise ActivedetError("selection needs column 'pred_classes' in the scores table")
        rows = self._rows(ids, "pred_classes")
        col = self.scores.column("pred_classes").to_pylist()
        return [col[r] or [] for r in rows]


@dataclass(frozen=True)
class Picked:
    """A strategy's answer: ids in rank order, the score each was picked by (None: none), and
    what the strategy measured or decided (``info``: flat numbers and strings, logged by select-batch)."""

    ids: list[str]
    scores: list[float | None]
    info: dict = field(default_factory=dict)


Strategy = Callable[[SelectionInput], Picked]
STRATEGIES: Registry[Strategy] = Registry("selection strategy")


# --------------------------------------------------------------------------- helpers


def rank_desc(values: np.ndarray) -> np.ndarray:
    """Indices sorting ``values`` high to low; NaN last; ties by index (pool order)."""
    v = np.where(np.isnan(values), -np.inf, values)
    return np.lexsort((np.arange(len(v)), -v))


def _nan_note(values: np.ndarray, name: str) -> None:
    bad = int(np.isnan(values).sum())
    if bad:
        log.warning("score %r is NaN for %d pool image(s): they rank last", name, bad)


def _topk(inp: SelectionInput, ids: list[str], name: str, k: int) -> Picked:
    values = inp.column(name, ids)
    _nan_note(values, name)
    order = rank_desc(values)[:k]
    return Picked([ids[i] for i in order], [float(values[i]) for i in order])


def uniform_candidates(pool: list[str], images: pa.Table | None, n: int) -> list[str]:
    """Every n-th pool frame of each sequence, in (sequence, frame_index) order."""
    if images is None:
        raise ActivedetError("uniform selection needs the dataset's images table (sequence_id, frame_index)")
    info = {
        iid: (seq, fr)
        for iid, seq, fr in zip(
            images.column("image_id").to_pylist(),
            images.column("sequence_id").to_pylist(),
            images.column("frame_index").to_pylist(), strict=False,
        )
    }
    by_seq: dict[str, list[tuple[int, str]]] = {}
    for iid in pool:
        seq, fr = info.get(iid, (None, None))
        key = seq if seq is not None else f"\x00{iid}"  # no sequence: a sequence of its own
        by_seq.setdefault(key, []).append((fr if fr is not None else 0, iid))
    out: list[str] = []
    for key in sorted(by_seq):
        frames = sorted(by_seq[key])
        out.extend(iid for pos, (_, iid) in enumerate(frames) if pos % n == 0)
    return out


def _even_subset(items: list[str], k: int) -> list[str]:
    if k >= len(items):
        return list(items)
    idx = np.floor(np.arange(k) * len(items) / k).astype(np.int64)
    return [items[i] for i in idx]


def _coreset(inp: SelectionInput, candidates: list[str], k: int) -> Picked:
    cand = inp.embeddings(candidates)
    try:
        centers = inp.embeddings(inp.labeled) if inp.labeled else None
    except ActivedetError as exc:
        raise ActivedetError(f"core-set needs the labeled images' embeddings (score with include_labeled): {exc}") from None
    res = k_center_greedy(cand, k, centers=centers, seed=inp.seed, device=inp.params.device)
    log.info("core-set: %d picked from %d candidates, %d initial centers; covering radius %.4f",
             len(res.indices), len(candidates), 0 if centers is None else len(centers), res.radius)
    return Picked([candidates[i] for i in res.indices], [None if not np.isfinite(d) else float(d) for d in res.pick_distances])


# --------------------------------------------------------------------------- strategies


@STRATEGIES.register("random")
def random_strategy(inp: SelectionInput) -> Picked:
    order = np.random.default_rng(inp.seed).permutation(len(inp.pool))[: inp.budget]
    return Picked([inp.pool[i] for i in order], [None] * len(order))


@STRATEGIES.register("uniform")
def uniform_strategy(inp: SelectionInput) -> Picked:
    n = inp.params.uniform_n or max(1, len(inp.pool) // max(inp.budget, 1))
    cands = uniform_candidates(inp.pool, inp.images, n)
    chosen = _even_subset(cands, inp.budget)
    if len(chosen) < inp.budget:
        log.warning("uniform: every %d-th frame gives %d candidate(s) < budget %d: filling evenly from the rest",
                    n, len(cands), inp.budget)
        taken = set(chosen)
        chosen += _even_subset([i for i in inp.pool if i not in taken], inp.budget - len(chosen))
    return Picked(chosen, [None] * len(chosen))


@STRATEGIES.register("topk")
def topk_strategy(inp: SelectionInput) -> Picked:
    return _topk(inp, inp.pool, inp.params.score, inp.budget)


@STRATEGIES.register("coreset")
def coreset_strategy(inp: SelectionInput) -> Picked:
    return _coreset(inp, inp.pool, inp.budget)


@STRATEGIES.register("uniform_topk")
def uniform_topk_strategy(inp: SelectionInput) -> Picked:
    n = inp.params.uniform_n or 5
    cands = uniform_candidates(inp.pool, inp.images, n)
    picked = _topk(inp, cands, inp.params.score, inp.budget)
    if len(picked.ids) < inp.budget:
        log.warning("uniform_topk: every %d-th frame gives %d candidate(s) < budget %d: filling by score from the rest",
                    n, len(cands), inp.budget)
        taken = set(picked.ids)
        rest = _topk(inp, [i for i in inp.pool if i not in taken], inp.params.score, inp.budget - len(picked.ids))
        picked = Picked(picked.ids + rest.ids, picked.scores + rest.scores)
    return picked


@STRATEGIES.register("prefilter_coreset")
def prefilter_coreset_strategy(inp: SelectionInput) -> Picked:
    m = max(inp.budget, int(np.ceil(inp.params.prefilter_factor * inp.budget)))
    top = _topk(inp, inp.pool, inp.params.score, m).ids
    return _coreset(inp, top, inp.budget)


@STRATEGIES.register("unified")
def unified_strategy(inp: SelectionInput) -> Picked:
    m = max(inp.budget, int(np.ceil(inp.params.unified_factor * inp.budget)))
    top = _topk(inp, inp.pool, "entropy", m).ids
    return _topk(inp, top, "inconsistency", inp.budget)


@STRATEGIES.register("class_balanced")
def class_balanced_strategy(inp: SelectionInput) -> Picked:
    values = inp.column(inp.params.score)
    _nan_note(values, inp.params.score)
    order = rank_desc(values)
    classes = inp.pred_classes(inp.pool)
    queues: dict[int, list[int]] = {}
    for i in order:  # each class's images, best score first
        for c in set(classes[i]):
            queues.setdefault(int(c), []).append(int(i))
    turn = sorted(queues, key=lambda c: (len(queues[c]), c))  # rarest class first
    taken: list[int] = []
    seen: set[int] = set()
    heads = {c: 0 for c in turn}
    while len(taken) < inp.budget and turn:
        still = []
        for c in turn:
            q = queues[c]
            while heads[c] < len(q) and q[heads[c]] in seen:
                heads[c] += 1
            if heads[c] < len(q) and len(taken) < inp.budget:
                taken.append(q[heads[c]])
                seen.add(q[heads[c]])
                heads[c] += 1
            if heads[c] < len(q):
                still.append(c)
        turn = still
    for i in order:  # images without predicted classes fill what quotas could not
        if len(taken) >= inp.budget:
            break
        if int(i) not in seen:
            taken.append(int(i))
            seen.add(int(i))
    return Picked([inp.pool[i] for i in taken], [float(values[i]) for i in taken])


def auto_choice(redundancy: float, labeled_pct: float, params: SelectionParams, model_ap50: float | None = None) -> str:
    """The strategy ``auto`` runs: the low-budget one while the model's held-out AP50 is under
    ``auto_min_ap50`` (its scores rank noise: Mittal et al.'s "random at very low budgets", keyed
    on what low budget does to the model); else the redundant-pool one when the near-duplicate share
    reaches ``auto_redundant_at``; on a diverse pool the low-budget one under ``auto_low_budget_pct`` %
    labeled, else the diverse-pool one (Table 6's layout; each cell is configurable)."""
    if model_ap50 is not None and model_ap50 < params.auto_min_ap50:
        return params.auto_low_budget_strategy
    if redundancy >= params.auto_redundant_at:
        return params.auto_redundant_strategy
    if labeled_pct < params.auto_low_budget_pct:
        return params.auto_low_budget_strategy
    return params.auto_diverse_strategy


@STRATEGIES.register("auto")
def auto_strategy(inp: SelectionInput) -> Picked:
    from activedet.al.redundancy import measure_redundancy

    ids = list(inp.pool) + list(inp.labeled)
    sequences = None
    if inp.images is not None and "sequence_id" in inp.images.column_names:
        by_id = dict(zip(inp.images.column("image_id").to_pylist(), inp.images.column("sequence_id").to_pylist(), strict=True))
        sequences = [by_id.get(i) for i in ids]
    measured = measure_redundancy(inp.embeddings(ids), sequences, ratio=inp.params.auto_near_dup_ratio, seed=inp.seed)
    labeled_pct = 100.0 * len(inp.labeled) / max(len(ids), 1)
    choice = auto_choice(measured.near_duplicate_share, labeled_pct, inp.params, inp.model_ap50)
    quality = "unknown" if inp.model_ap50 is None else f"{inp.model_ap50:.3f}"
    log.info("auto: near-duplicate share %.2f (%.0f%% of them within a sequence, %d images measured), %.1f%% labeled, "
             "model AP50 %s -> %s", measured.near_duplicate_share, 100 * measured.within_sequence_share, measured.measured,
             labeled_pct, quality, choice)
    picked = STRATEGIES.get(choice)(inp)
    info = {**{f"auto.{k}": (v if v == v else None) for k, v in measured.as_dict().items()},  # NaN: not measurable
            "auto.labeled_pct": labeled_pct, "auto.model_ap50": inp.model_ap50, "auto.choice": choice}
    return Picked(picked.ids, picked.scores, info)


# --------------------------------------------------------------------------- entry point


#: strategies that rank by the configured ``score`` column, and those that need embeddings (k-center)
RANKS_BY_SCORE = frozenset({"topk", "uniform_topk", "prefilter_coreset", "class_balanced", "auto"})
NEEDS_EMBEDDINGS = frozenset({"coreset", "prefilter_coreset", "auto"})
#: strategies that read the scoring model's held-out AP50 (SelectionInput.model_ap50)
READS_MODEL_QUALITY = frozenset({"auto"})


def required_columns(strategy: str, score: str, params: SelectionParams | None = None) -> list[str]:
    """Score columns ``strategy`` reads from the scores table (``score``: the configured one;
    ``params``: for ``auto``, which strategies it may choose; None = the defaults)."""
    cols = [score] if strategy in RANKS_BY_SCORE else []
    if strategy == "unified":
        cols += ["entropy", "inconsistency"]
    if strategy in NEEDS_EMBEDDINGS:
        cols.append("embedding")
    if strategy == "auto":
        for candidate in (params or SelectionParams()).auto_candidates():
            cols += required_columns(candidate, score)
    return list(dict.fromkeys(cols))


def select(strategy: str, inp: SelectionInput) -> Picked:
    """Run ``strategy`` with the shared rules (pool only, no duplicates, budget capping)."""
    fn = STRATEGIES.get(strategy)
    if inp.budget < 0:
        raise ActivedetError(f"selection budget must be >= 0, got {inp.budget}")
    if not inp.pool:
        log.warning("selection: the pool is empty; nothing to select")
        return Picked([], [])
    budget = inp.budget
    if budget > len(inp.pool):
        log.warning("selection: budget %d exceeds the pool (%d images): selecting the whole pool", budget, len(inp.pool))
        budget = len(inp.pool)
    if len(set(inp.pool)) != len(inp.pool):
        raise ActivedetError("selection: the pool has duplicate image ids")
    inp = replace(inp, budget=budget)
    picked = fn(inp) if budget else Picked([], [])
    pool = set(inp.pool)
    outside = [i for i in picked.ids if i not in pool]
    if outside or len(set(picked.ids)) != len(picked.ids) or len(picked.ids) > budget:
        # a strategy bug, not a user error: keep the traceback
        raise RuntimeError(f"strategy {strategy!r} returned {len(picked.ids)} ids ({len(outside)} outside the pool) for budget {budget}")
    return picked
