"""Which stages a run executes, with which configs -- and the load-time check of all of them.

Each stage module maps the experiment onto its own ``Config`` (``from_experiment(exp, layout,
cycle, **upstream)``, next to ``Config`` and ``run``); this module only says which stages run in
a cycle (:func:`cycle_stages`), dispatches to their ``from_experiment`` (:func:`stage_config`)
and, at load, builds every stage config of every cycle and checks the rules no single stage sees
(:func:`validate`). A bad value therefore fails in seconds, naming its key path, before anything
is compiled, submitted or trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from activedet import store
from activedet.config import StageConfig, load_config
from activedet.errors import ActivedetError, ConfigError
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

#: run root used to build the stage configs at load time (nothing is read or written there)
VALIDATION_ROOT = "s3://activedet-validate/run"


def next_budget(exp: ExperimentConfig, labeled: int) -> int:
    """Images to select after a cycle with ``labeled`` labeled images (0 when the cap is reached)."""
    cap = exp.stopping.budget_cap
    if cap is None:
        return exp.budget
    return max(0, min(exp.budget, cap - labeled))


def selects_after(exp: ExperimentConfig, cycle: int) -> bool:
    """Whether cycle ``cycle`` ends with a selection (not the last cycle, or labeling by export)."""
    return cycle < exp.cycles - 1 or exp.labeling == "export"


def scores_needed(exp: ExperimentConfig) -> bool:
    """Whether the selection strategy reads a scores table (random and uniform do not)."""
    from activedet.al.selection import SelectionParams, required_columns

    acq = exp.acquisition
    return bool(required_columns(acq.strategy, acq.score, SelectionParams.from_strategy_params(acq.strategy_params)))


def cycle_stages(exp: ExperimentConfig, cycle: int) -> list[tuple[str, dict[str, Any]]]:
    """The stages of cycle ``cycle`` in order, each with its upstream values (shard, budget)."""
    steps: list[tuple[str, dict[str, Any]]] = [("train-teacher", {})]
    if exp.ssl.needs_pseudo_labels:
        if exp.pseudo_labels.shards > 1:
            steps += [("generate-pseudo-labels", {"shard": s}) for s in range(exp.pseudo_labels.shards)]
            steps.append(("merge-pseudo-labels", {}))
        else:
            steps.append(("generate-pseudo-labels", {}))
    if exp.ssl.enabled:
        steps.append(("train-student-ssl", {}))
    steps.append(("evaluate", {}))
    if selects_after(exp, cycle):
        if scores_needed(exp):  # random and uniform select without a model pass over the pool
            steps += [("score-unlabeled", {"shard": s}) for s in range(exp.acquisition.shards)]
            steps.append(("merge-scores", {}))
        steps.append(("select-batch", {"budget": next_budget(exp, exp.labeled_at(cycle))}))
        if exp.labeling == "oracle":
            steps.append(("oracle", {}))
    return steps


def stage_config(
    stage: str,
    exp: ExperimentConfig,
    run_root: str,
    cycle: int,
    *,
    tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    arm: str = "",
    **upstream: Any,
) -> StageConfig:
    """The ``Config`` of ``stage`` in ``cycle`` (its module's ``from_experiment``, tracking fields set).

    ``arm``: a baseline arm's strategy (``exp.baselines``): the arm's experiment and layout.
    """
    from activedet.stages import stage_module

    module = stage_module(stage)
    if not hasattr(module, "from_experiment"):
        raise ConfigError(f"stage {stage!r} is not a pipeline stage")
    if arm:
        exp = exp.arm(arm)
    config = module.from_experiment(exp, RunLayout(run_root, exp, arm), cycle, **upstream)
    return config.model_copy(update={"mlflow_tracking_uri": tracking_uri or None, "mlflow_run_id": mlflow_run_id or None})


def resolve(exp: ExperimentConfig, run_root: str = VALIDATION_ROOT) -> dict[str, dict[str, Any]]:
    """Every stage config of the run: ``{"init": {...}, "cycle-00": {stage: {...}}, ...}`` (JSON-ready).

    Score shards are listed once (shard 0; the others differ only in ``shard`` and ``output_uri``).
    A baseline arm's cycles are ``"<arm>/cycle-KK"``: its selection after cycle 0, then its own cycles.
    """
    tracking = {"mlflow_tracking_uri", "mlflow_run_id"}
    out: dict[str, dict[str, Any]] = {"init": stage_config("init", exp, run_root, 0).model_dump(mode="json", exclude=tracking)}
    for arm in ("", *exp.baselines):
        for cycle in range(exp.cycles):
            configs = {}
            for stage, upstream in arm_cycle_stages(exp, cycle, arm):
                config = stage_config(stage, exp, run_root, cycle, arm=arm, **upstream)
                configs.setdefault(stage, config.model_dump(mode="json", exclude=tracking))
            if configs:
                out[f"{arm}/cycle-{cycle:02d}" if arm else f"cycle-{cycle:02d}"] = configs
    return out


#: the stages of a cycle that acquire the next batch (after its evaluation)
ACQUISITION_STAGES = ("score-unlabeled", "merge-scores", "select-batch", "oracle")


def arm_cycle_stages(exp: ExperimentConfig, cycle: int, arm: str = "") -> list[tuple[str, dict[str, Any]]]:
    """:func:`cycle_stages` of an arm: a baseline arm trains from cycle 1 on (cycle 0 is shared) but selects after cycle 0."""
    if not arm:
        return cycle_stages(exp, cycle)
    stages = cycle_stages(exp.arm(arm), cycle)
    if cycle == 0:
        return [(stage, upstream) for stage, upstream in stages if stage in ACQUISITION_STAGES]
    return stages


def load_experiment(source: str | Path | dict, *, check: bool = True, **overrides) -> ExperimentConfig:
    """Load and validate an experiment config; errors are one-line :class:`ConfigError`.

    With ``check`` (the default) every stage config of every cycle is built and the cross-stage
    rules are checked too (:func:`validate`), so a bad value fails here, naming its key path, not
    in the stage that first uses it. ``check=False`` only parses (the experiment schema).
    """
    exp = load_config(ExperimentConfig, source, **overrides)
    if check:
        validate(exp, where=str(source) if isinstance(source, (str, Path)) else "experiment")
    return exp


def validate(exp: ExperimentConfig, where: str = "experiment") -> dict[str, dict[str, Any]]:
    """Build every stage config of every cycle and check the cross-stage rules; returns :func:`resolve`.

    Raises a one-line :class:`ConfigError` that names the key path (``where: [stage:] key.path: what``).
    """
    from activedet.stages.evaluate import METRICS

    try:
        if exp.stopping.metric not in METRICS:
            raise ConfigError(f"stopping.metric: unknown metric {exp.stopping.metric!r}; valid: {', '.join(METRICS)}")
        from activedet.al.selection import STRATEGIES

        for name in exp.baselines:
            if name not in STRATEGIES:
                raise ConfigError(f"baselines: unknown selection strategy {name!r}; valid: {', '.join(STRATEGIES.names())}")
        check_backend_features(exp)
        resolved = resolve(exp)
        if not any(selects_after(exp, k) for k in range(exp.cycles)):
            # a one-cycle run never selects, but its acquisition settings must still be sound
            for stage in ("score-unlabeled", "select-batch"):
                stage_config(stage, exp, VALIDATION_ROOT, 0)
        _check_dataset(exp)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return resolved


def check_backend_features(exp: ExperimentConfig) -> None:
    """Refuse features the preset's backend cannot give (detectron2: the mean teacher, the certainty
    head, ``backbone_weights``), in one line naming the feature and the backend."""
    from activedet.models.backend import check_supported

    t = exp.training
    check_supported(t.preset, {
        "ssl.mode mean_teacher": exp.ssl.enabled and exp.ssl.mode == "mean_teacher",
        "preset_options.box_head certainty": t.preset_options.get("box_head", "standard") != "standard",
        "acquisition.score localization": exp.acquisition.score == "localization",
        "training.backbone_weights": bool(t.backbone_weights),
    })


def _train_pool_size(exp: ExperimentConfig) -> tuple[int, str] | None:
    """(train images, where) of the dataset when it can be known without the network, else None."""
    synth = exp.dataset.synth
    if synth is not None:
        from activedet.data.synth import split_counts

        n_val, n_test = split_counts(synth.sequences, synth.val_fraction, synth.test_fraction)
        if not n_val:
            raise ConfigError(f"dataset.synth: val_fraction {synth.val_fraction} of {synth.sequences} sequences gives no val "
                              "images, and evaluate needs them; raise val_fraction or sequences")
        from activedet.data.synth import CATEGORIES

        _check_rare_classes(exp, list(CATEGORIES.values()))
        return (synth.sequences - n_val - n_test) * synth.frames, "dataset.synth"
    uri = exp.dataset.uri or ""
    if store.is_s3(uri):
        return None  # the bucket may be reachable only from the cluster
    from activedet.data.dataset import load_dataset

    if not Path(store.local_path(uri)).exists():
        raise ConfigError(f"dataset.uri: no dataset at {uri} (import one with `activedet data import-coco` or use dataset.synth)")
    try:
        dataset = load_dataset(uri)
    except ActivedetError as exc:
        raise ConfigError(f"dataset.uri: {exc}") from None
    from activedet.data.readiness import check_run_ready

    check_run_ready(dataset, initial_size=exp.initial_size)  # empty val, classes without boxes: fail before training
    _check_rare_classes(exp, dataset.class_names)
    return len(dataset.split_ids("train")), f"dataset.uri {uri}"


def _check_rare_classes(exp: ExperimentConfig, class_names: list[str]) -> None:
    unknown = [n for n in exp.evaluation.rare_classes or () if n not in class_names]
    if unknown:
        raise ConfigError(f"evaluation.rare_classes: unknown class {unknown[0]!r}; valid: {', '.join(class_names)}")


def _check_dataset(exp: ExperimentConfig) -> None:
    known = _train_pool_size(exp)
    if known is None:
        return
    pool, source = known
    if exp.initial_size > pool:
        raise ConfigError(f"initial_size: {exp.initial_size} is more than the {pool} train images of {source}")
    if exp.initial_size == pool and exp.cycles > 1 and exp.labeling == "oracle":
        raise ConfigError(f"initial_size: {exp.initial_size} labels all {pool} train images of {source}: nothing left to select")


def check_cluster_devices(exp: ExperimentConfig) -> None:
    """On a cluster, GPU training ranks get one GPU each from the pod: ``training.devices`` <= ``accelerator_limit``."""
    from activedet.stages.train_teacher import training_devices

    devices, gpus = training_devices(exp), exp.kubernetes.accelerator_limit
    if exp.device != "cpu" and devices > gpus:
        raise ConfigError(f"training.devices: {devices} training ranks need {devices} GPUs per training pod, but "
                          f"kubernetes.accelerator_limit is {gpus}; raise accelerator_limit or lower training.devices")


def check_cluster_storage(exp: ExperimentConfig) -> None:
    """Cluster steps run in separate pods and share only the artifact store: it must be ``s3://``."""
    if not store.is_s3(exp.store_root or ""):
        got = f"'{exp.store_root}'" if exp.store_root else f"unset, i.e. pod-local 'runs/{exp.name}'"
        raise ConfigError(
            f"store_root: a cluster pipeline needs an s3:// store_root (got {got}: each step would lose the others' "
            "outputs); set store_root, or compile with --local for kfp.local"
        )
    if exp.dataset.uri and not store.is_s3(exp.dataset.uri):
        raise ConfigError(f"dataset.uri: a cluster pipeline needs an s3:// dataset (got pod-local '{exp.dataset.uri}'); "
                          "or compile with --local")
