"""The continuous-mode KFP pipeline: one scheduled run = one cycle on persistent state.

Continuous-only steps (begin, ingest, import-labels, promote, finish) are components defined
here around :mod:`activedet.ops.continuous`; the shared stages reuse the active-learning
pipeline's components (:func:`activedet.pipeline.components.make_components`) with cycle 0 of
the cycle's run root, and the same cluster settings (:func:`activedet.pipeline.dag._configure`).
``max_concurrency=1`` on the recurring run keeps scheduled runs from overlapping; if two overlap
anyway (a manual run), the state commit refuses the loser.

Imports go one way: this module (the DAG) uses :mod:`activedet.ops.continuous` (the steps), never
the reverse. :func:`run_local` runs the same DAG through kfp.local (what the tests run).
"""

# No "from __future__ import annotations": KFP reads the component functions' real annotations.
import warnings
from pathlib import Path
from types import SimpleNamespace

from kfp import dsl

from activedet import images
from activedet.ops.continuous import pipeline_params
from activedet.ops.state import StateStore
from activedet.pipeline.components import make_components
from activedet.pipeline.dag import _configure, pseudo_labels, score_and_merge
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.plan import load_experiment


def begin(experiment: str, state_root: str) -> str:
    """Read the persistent state (bootstrap on the first run); returns the cycle's run root."""
    from activedet.ops import continuous

    return continuous.begin(experiment, state_root)


def ingest(experiment: str, run_root: str, source_uri: str) -> str:
    """activedet.stages.ingest: register newly arrived images."""
    from activedet.ops import continuous

    return continuous.ingest_step(experiment, run_root, source_uri)


def import_labels(experiment: str, run_root: str, state_root: str, returns_uri: str) -> str:
    """activedet.stages.import_labels: merge returned labels; returns the cycle's experiment JSON."""
    from activedet.ops import continuous

    return continuous.import_labels_step(experiment, run_root, state_root, returns_uri)


def promote(experiment: str, run_root: str, state_root: str) -> str:
    """activedet.stages.promote: move the champion alias only on improvement."""
    from activedet.ops import continuous

    return continuous.promote_step(experiment, run_root, state_root)


def finish(experiment: str, run_root: str, state_root: str, promote_result: str) -> str:
    """Export the batch for labeling and commit the state (loses cleanly to an overlapping run)."""
    from activedet.ops import continuous

    return continuous.finish_step(experiment, run_root, state_root, promote_result)


#: continuous-only component function -> image kind
KINDS = {begin: "cpu", ingest: "cpu", import_labels: "cpu", promote: "cpu", finish: "cpu"}


def make_ops_components(registry: str | None = None) -> SimpleNamespace:
    """KFP components of the continuous-only steps, bound to the CPU image."""
    cpu = images.cpu_image(registry)
    return SimpleNamespace(**{f.__name__: dsl.component(func=f, base_image=cpu, install_kfp_package=False) for f in KINDS})


def build_continuous(exp: ExperimentConfig, *, platform: bool = True):
    """The continuous-mode pipeline for ``exp`` (parameters: experiment, state_root, source_uri, returns_uri)."""
    c, o = make_components(exp.kubernetes.image_registry, preset=exp.training.preset), make_ops_components(exp.kubernetes.image_registry)
    defaults = pipeline_params(exp)

    def conf(task):
        return _configure(task, exp, platform)

    @dsl.pipeline(name=f"{exp.name}-continuous", description="activedet continuous mode: one cycle on persistent state")
    def continuous(
        experiment: str = defaults["experiment"],
        state_root: str = defaults["state_root"],
        source_uri: str = defaults["source_uri"],
        returns_uri: str = defaults["returns_uri"],
    ):
        b = conf(o.begin(experiment=experiment, state_root=state_root))
        ing = conf(o.ingest(experiment=experiment, run_root=b.output, source_uri=source_uri))
        imp = conf(o.import_labels(experiment=experiment, run_root=b.output, state_root=state_root,
                                   returns_uri=returns_uri).after(ing))
        common = {"experiment": imp.output, "run_root": b.output, "cycle": 0, "cycle_run_id": ""}
        last = teacher = conf(c.train_teacher(**common))
        if exp.ssl.enabled:
            pseudo = pseudo_labels(c, exp, conf, name="pseudo-label-shards", platform=platform, after=teacher, **common)
            last = conf(c.train_student_ssl(**common).after(pseudo))
        ev = conf(c.evaluate(**common).after(last))
        promo = conf(o.promote(experiment=imp.output, run_root=b.output, state_root=state_root).after(ev))
        merge = score_and_merge(c, exp, conf, name="score-shards", platform=platform, after=promo, **common)
        select = conf(c.select_batch(budget=exp.budget, **common).after(merge))
        conf(o.finish(experiment=imp.output, run_root=b.output, state_root=state_root, promote_result=promo.output).after(select))

    return continuous


def compile_continuous(config_path: str, output: str | Path, *, platform: bool = True) -> tuple[Path, dict[str, str]]:
    """Compile the continuous-mode pipeline for an experiment config; returns (package, params).

    For a cluster (``platform``) the store must be ``s3://`` (:func:`~activedet.pipeline.plan.check_cluster_storage`).
    """
    from kfp import compiler

    from activedet.pipeline.plan import check_cluster_devices, check_cluster_storage

    exp = load_experiment(config_path)
    if platform:
        check_cluster_storage(exp)
        check_cluster_devices(exp)
    compiler.Compiler().compile(build_continuous(exp, platform=platform), package_path=str(output))
    return Path(output), pipeline_params(exp)


def run_local(exp: ExperimentConfig, state_root: str, *, source_uri: str, returns_uri: str, pipeline_root: str | Path) -> dict:
    """Run one continuous-mode cycle through kfp.local (the compiled DAG, not a copy); returns its lineage entry."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    params = pipeline_params(exp, state_root=state_root, source_uri=source_uri, returns_uri=returns_uri)
    with warnings.catch_warnings():
        # kfp.local warns on every task whose image name lacks "python"; here the venv runs them.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        build_continuous(exp, platform=False)(**params)
    return StateStore(state_root).read().lineage[-1]
