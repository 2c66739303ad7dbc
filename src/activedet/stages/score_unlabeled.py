"""score-unlabeled: per-image acquisition scores and embeddings for the unlabeled pool.

The pool is the ledger's unlabeled images of the split, sorted by image_id (with
``include_labeled`` also its labeled and pending images, whose embeddings core-set uses as
initial centers). ``--shard i/n`` scores the i-th of n contiguous slices of that order; the
merge-scores stage concatenates the shards back into exactly the table ``0/1`` gives.

Output (``output_uri``): ``scores.parquet`` (schema.scores_schema: ``image_id``, one float64
column per score, ``num_boxes`` and ``pred_classes`` over boxes at or above ``score_floor``, and
``embedding`` as a fixed-size list<float32> when asked) and ``scores.json`` (shard, pool digest,
columns). ``scores`` names registered acquisition scores (entropy, inconsistency, mc_dropout),
``embedding``, or ``unified`` (shorthand for entropy + inconsistency; the unified ranking itself
is the select-batch strategy ``unified``, because it needs the budget). ``localization`` needs a
detector with the certainty box head. The detector keeps boxes above ``predict_floor``, below the
scorers' ``score_floor`` (see :mod:`activedet.al.scores`, inconsistency).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator, model_validator

from activedet import schema, store
from activedet.al import ledger as ledger_mod
from activedet.al.scores import SCORES, AcquisitionScore, build_scorers
from activedet.al.selection import NEEDS_EMBEDDINGS, SelectionParams, required_columns
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError, ConfigError
from activedet.models.types import ImagePrediction
from activedet.progress import Progress
from activedet.tracking import tracker_for

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "score-unlabeled"
IMAGE = "gpu"
SCORES_FILE = "scores.parquet"
SCORES_META = "scores.json"
EMBEDDING = "embedding"
UNIFIED = "unified"


class Config(StageConfig):
    checkpoint_uri: str = Field(description="detector checkpoint URI (safetensors + meta.json)")
    dataset_uri: str = Field(description="dataset URI")
    ledger_uri: str = Field(description="ledger URI (committed output with ledger.parquet)")
    output_uri: str = Field(description="output prefix for scores.parquet / scores.json")
    scores: list[str] = Field(
        default_factory=lambda: ["entropy", "embedding"],
        description="scores to compute: entropy, inconsistency, mc_dropout, embedding, unified (= entropy + inconsistency)",
    )
    entropy_aggregation: Literal["max", "mean", "sum"] = Field("max", description="entropy: box scores -> image score")
    score_floor: float = Field(0.05, ge=0.0, le=1.0, description="boxes with detection score below this are ignored")
    predict_floor: float | None = Field(
        None, ge=0.0, le=1.0,
        description="the detector keeps boxes scoring above this (default score_floor / 5); must be below "
        "score_floor, so a scored box's partner in the other flip view is not cut by the same threshold",
    )
    divergence: Literal["kl", "js"] = Field("kl", description="inconsistency: symmetric KL or Jensen-Shannon")
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="inconsistency: IoU to match original and flipped boxes")
    unmatched: Literal["background", "ignore"] = Field(
        "ignore", description="inconsistency: boxes seen in one flip view only are ignored, or scored against background"
    )
    mc_samples: int = Field(10, ge=2, description="mc_dropout: number of stochastic passes T")
    seed: int = Field(0, description="seed of the MC-dropout masks (per batch, so shards reproduce a single run)")
    include_labeled: bool = Field(False, description="also score labeled and pending images (core-set needs their embeddings)")
    split: str = Field("train", description="dataset split of the pool")
    shard: str = Field("0/1", description="'i/n': score the i-th of n contiguous slices of the pool")
    batch_size: int = Field(8, ge=1, description="inference batch size")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes (accepted for the pipeline; the predictor reads images in-process)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")

    @field_validator("scores")
    @classmethod
    def _known_scores(cls, value: list[str]) -> list[str]:
        valid = set(SCORES.names()) | {EMBEDDING, UNIFIED}
        bad = [s for s in value if s not in valid]
        if bad:
            raise ValueError(f"unknown score(s) {bad}; valid: {', '.join(sorted(valid))}")
        if not value:
            raise ValueError("at least one score is needed")
        return value

    @field_validator("shard")
    @classmethod
    def _shard_format(cls, value: str) -> str:
        parse_shard(value)
        return value

    @model_validator(mode="after")
    def _floors(self) -> Config:
        if self.predict_floor is not None and 0 < self.predict_floor >= self.score_floor:
            raise ValueError(
                f"predict_floor {self.predict_floor} must be below score_floor {self.score_floor}, "
                "else boxes flickering across one threshold look like flip disagreements"
            )
        return self

    @property
    def detector_floor(self) -> float:
        """The predictor's score floor: ``predict_floor``, by default a fifth of ``score_floor``."""
        return self.score_floor / 5 if self.predict_floor is None else self.predict_floor


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int, shard: int = 0) -> Config:
    """Shard ``shard`` of cycle ``cycle``'s pool: the columns the selection strategy reads."""
    acq = exp.acquisition
    valid = sorted(set(SCORES.names()) | {EMBEDDING, UNIFIED})
    if acq.score not in valid:
        raise ConfigError(f"acquisition.score: unknown acquisition score {acq.score!r}; valid: {', '.join(valid)}")
    params = SelectionParams.from_strategy_params(acq.strategy_params)
    scores = list(dict.fromkeys(required_columns(acq.strategy, acq.score, params) or [acq.score]))
    if "localization" in scores and exp.training.preset_options.get("box_head") != "certainty":
        raise ConfigError("acquisition.score: 'localization' needs training.preset_options.box_head: certainty "
                          "(the standard box head gives no localization quality)")
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={"batch_size": "training.batch_size", "num_workers": "training.num_workers", "device": "device"},
        spread=("acquisition.score_params",),
        checkpoint_uri=layout.model(cycle), dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle),
        output_uri=layout.scores_shard(cycle, shard), scores=scores, include_labeled=acq.strategy in NEEDS_EMBEDDINGS,
        shard=f"{shard}/{acq.shards}",
    )


class Result(BaseModel):
    scores_uri: str
    rows: int
    pool_size: int
    shard: str
    columns: list[str]


# --------------------------------------------------------------------------- pure pieces


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need 0 <= i < n")
    return i, n


def shard_slice(ids: list[str], index: int, count: int, align: int = 1) -> list[str]:
    """The ``index``-th of ``count`` contiguous slices of ``ids``, cut at multiples of ``align``.

    Slices hold whole units of ``align`` ids (the last unit may be short); unit counts differ by
    at most one between slices. Aligning to the batch size makes every shard run exactly the
    batches a single run would.
    """
    units = -(-len(ids) // align)
    return ids[(index * units // count) * align : ((index + 1) * units // count) * align]


def pool_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def expand_scores(names: list[str]) -> tuple[list[str], bool]:
    """Score column names (registry order kept as given, deduplicated) and whether to embed."""
    cols: list[str] = []
    for name in names:
        for n in (["entropy", "inconsistency"] if name == UNIFIED else [name]):
            if n != EMBEDDING and n not in cols:
                cols.append(n)
    return cols, EMBEDDING in names


def scoring_pool(ledger: pa.Table, split_ids: list[str], include_labeled: bool) -> list[str]:
    """Sorted ids to score: unlabeled (plus labeled/pending when asked) images of the split."""
    states = ("unlabeled", "labeled", "pending") if include_labeled else ("unlabeled",)
    in_split = set(split_ids)
    return sorted(i for i in ledger_mod.ids_in_state(ledger, *states) if i in in_split)


def score_predictions(
    predictions: Iterable[ImagePrediction],
    scorers: dict[str, AcquisitionScore],
    *,
    with_embedding: bool,
    score_floor: float,
    expected_ids: list[str] | None = None,
) -> pa.Table:
    """One scores-table row per prediction, in input order (schema.scores_schema)."""
    ids: list[str] = []
    cols: dict[str, list[float]] = {n: [] for n in scorers}
    num_boxes: list[int] = []
    classes: list[list[int]] = []
    embs: list[np.ndarray] = []
    for pred in predictions:
        ids.append(pred.image_id)
        for name, fn in scorers.items():
            cols[name].append(fn(pred))
        keep = np.asarray(pred.detections.scores, np.float64) >= score_floor
        num_boxes.append(int(keep.sum()))
        classes.append(sorted({int(c) for c in np.asarray(pred.detections.labels)[keep]}))
        if with_embedding:
            if pred.embedding is None:
                raise ActivedetError(f"score-unlabeled: no embedding for image {pred.image_id!r}")
            embs.append(np.asarray(pred.embedding, np.float32).reshape(-1))
    if expected_ids is not None and ids != list(expected_ids):
        raise RuntimeError(f"predictor returned {len(ids)} predictions out of order or incomplete for {len(expected_ids)} images")
    dim = embs[0].shape[0] if embs else None
    sch = schema.scores_schema(list(scorers), dim)
    arrays = [pa.array(ids, pa.string())]
    arrays += [pa.array(cols[n], pa.float64()) for n in scorers]
    arrays += [pa.array(num_boxes, pa.int32()), pa.array(classes, pa.list_(pa.int32()))]
    if dim:
        mat = np.stack(embs)
        if mat.shape[1] != dim:
            raise ActivedetError("score-unlabeled: embeddings of different sizes")
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), dim))
    return schema.validate_scores(pa.Table.from_arrays(arrays, schema=sch))


# --------------------------------------------------------------------------- detector adapter


def _predictions(config: Config, dataset, ids: list[str], needs: set[str], with_embedding: bool) -> Iterator[ImagePrediction]:
    """Run the detector over ``ids`` asking for exactly the prediction parts the scores need.

    The predictor applies NMS (per class) before anything is scored (Elezi supplementary 6.1).
    Batches are cut at multiples of ``batch_size`` of the pool order (shards are aligned to them,
    see :func:`shard_slice`) and torch's RNG is seeded per batch from ``seed`` and the batch's
    first image id, so MC-dropout masks -- and hence every score -- are the same whether a batch
    ran in one shard or another.
    """
    import torch

    from activedet.models.checkpoint import load_detector  # torch and weights: imported late
    from activedet.models.data import read_image
    from activedet.models.predict import Predictor, resolve_device

    device = resolve_device(config.device)
    detector = load_detector(config.checkpoint_uri, dataset=dataset, device=device)
    predictor = Predictor(detector, device=device, batch_size=config.batch_size, score_floor=config.detector_floor)
    uri_of = dict(zip(dataset.images.column("image_id").to_pylist(), dataset.images.column("uri").to_pylist(), strict=True))
    for start in range(0, len(ids), config.batch_size):
        chunk = ids[start : start + config.batch_size]
        torch.manual_seed(zlib.crc32(f"{config.seed}:{chunk[0]}".encode()))
        images = [read_image(dataset, i, uri_of[i], predictor.cache) for i in chunk]
        yield from predictor.predict_images(
            images,
            chunk,
            flip_tta="flipped" in needs,
            mc_samples=config.mc_samples if "mc_probs" in needs else 0,
            embeddings=with_embedding,
        )


# --------------------------------------------------------------------------- stage


def run(config: Config) -> Result:
    """Score the config's shard of the pool with the detector checkpoint."""
    return score_pool(config, lambda dataset, ids, needs, emb: _predictions(config, dataset, ids, needs, emb))


PredictFn = Callable[[object, list[str], set[str], bool], Iterable[ImagePrediction]]


def score_pool(config: Config, predict: PredictFn) -> Result:
    """The stage body with the prediction source passed in: ``predict(dataset, ids, needs,
    with_embedding)`` must yield one :class:`ImagePrediction` per id, in order. ``run`` passes
    the detector; replaying stored predictions or another model plugs in here."""
    from activedet.data.dataset import load_dataset

    index, count = parse_shard(config.shard)
    names, with_embedding = expand_scores(config.scores)
    try:
        scorers = build_scorers(
            names, score_floor=config.score_floor, entropy_aggregation=config.entropy_aggregation,
            divergence=config.divergence, match_iou=config.match_iou, unmatched=config.unmatched,
        )
    except ActivedetError as exc:
        raise ConfigError(f"stage score-unlabeled: {exc}") from None
    dataset = load_dataset(config.dataset_uri)
    ledger, _ = ledger_mod.read_ledger(config.ledger_uri)
    pool = scoring_pool(ledger, dataset.split_ids(config.split), config.include_labeled)
    ids = shard_slice(pool, index, count, align=config.batch_size)
    log.info("score-unlabeled: shard %s: %d of %d pool images; scores %s%s", config.shard, len(ids), len(pool), names,
             " + embedding" if with_embedding else "")
    needs = set().union(*(s.needs for s in scorers.values())) if scorers else set()
    preds: Iterable[ImagePrediction] = predict(dataset, ids, needs, with_embedding) if ids else []
    with Progress(len(ids), "scoring", unit="img") as bar:
        def counted():
            for p in preds:
                yield p
                bar.update()
        table = score_predictions(counted(), scorers, with_embedding=with_embedding,
                                  score_floor=config.score_floor, expected_ids=ids)
    meta = {
        "shard": index, "num_shards": count, "pool_size": len(pool), "pool_digest": pool_digest(pool),
        "rows": table.num_rows, "scores": names, "embedding": with_embedding, "ledger_uri": config.ledger_uri,
        "checkpoint_uri": config.checkpoint_uri, "include_labeled": config.include_labeled,
        "batch_size": config.batch_size, "seed": config.seed,
    }
    with store.OutputWriter(config.output_uri) as out:
        out.write_table(SCORES_FILE, table)
        out.write_json(SCORES_META, meta)
    metrics = {f"score_mean_{n}": float(np.nanmean(table.column(n).to_numpy(zero_copy_only=False))) for n in names if table.num_rows}
    tracker_for(config, run_name="score-unlabeled").log_metrics({"scored_images": table.num_rows, **metrics})
    return Result(scores_uri=config.output_uri, rows=table.num_rows, pool_size=len(pool), shard=config.shard, columns=table.column_names)
