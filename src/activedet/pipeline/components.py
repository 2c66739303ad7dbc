"""KFP lightweight components: one per pipeline step, each a thin call into activedet.

Each function below is the body of one component. KFP ships the function's source to the
container and runs it there, so every import sits inside the function; the images carry the
package (``install_kfp_package=False``, no ``packages_to_install``). Components pass the
experiment JSON, the run root URI, the cycle number and small JSON results, never big artifacts:
stages find their inputs and outputs through :class:`activedet.pipeline.layout.RunLayout`.

:func:`make_components` binds the functions to images from :mod:`activedet.images`: a stage's
component gets the image its module declares (``IMAGE``, see :mod:`activedet.stages`), the glue
steps (MLflow runs, cycle summary, export) the CPU image.
"""

# No "from __future__ import annotations": KFP reads the real annotation objects.
from types import SimpleNamespace
from typing import NamedTuple

from kfp import dsl

from activedet import images


def start_run(experiment: str, run_root: str) -> str:
    """Prepare the dataset and create the MLflow parent run; returns its id."""
    from activedet.pipeline import steps

    return steps.start_run(experiment, run_root)


def start_cycle(experiment: str, run_root: str, cycle: int, parent_run_id: str) -> str:
    """Create the cycle's MLflow child run; returns its id."""
    from activedet.pipeline import steps

    return steps.start_cycle(experiment, run_root, cycle, parent_run_id)


def init(experiment: str, run_root: str) -> str:
    """activedet.stages.init: the random initial labeled set of size I."""
    from activedet.pipeline import steps

    return steps.run_stage("init", experiment, run_root, 0)


def train_teacher(experiment: str, run_root: str, cycle: int, cycle_run_id: str) -> str:
    """activedet.stages.train_teacher on the cycle's labeled images."""
    from activedet.pipeline import steps

    return steps.run_stage("train-teacher", experiment, run_root, cycle, cycle_run_id)


def generate_pseudo_labels(experiment: str, run_root: str, cycle: int, cycle_run_id: str) -> str:
    """activedet.stages.generate_pseudo_labels: the teacher labels the unlabeled pool."""
    from activedet.pipeline import steps

    return steps.run_stage("generate-pseudo-labels", experiment, run_root, cycle, cycle_run_id)


def train_student_ssl(experiment: str, run_root: str, cycle: int, cycle_run_id: str) -> str:
    """activedet.stages.train_student_ssl: the student on labeled + pseudo-labeled images."""
    from activedet.pipeline import steps

    return steps.run_stage("train-student-ssl", experiment, run_root, cycle, cycle_run_id)


def evaluate(experiment: str, run_root: str, cycle: int, cycle_run_id: str) -> str:
    """activedet.stages.evaluate: COCO AP of the cycle's model on the val split."""
    from activedet.pipeline import steps

    return steps.run_stage("evaluate", experiment, run_root, cycle, cycle_run_id)


def finish_cycle(
    experiment: str, run_root: str, cycle: int, parent_run_id: str, cycle_run_id: str, eval_result: str, pseudo_result: str
) -> NamedTuple("CycleEnd", [("proceed", bool), ("budget", int), ("summary", str)]):
    """Summary row, MLflow metrics/artifacts and the stop decision of one cycle (typed outputs).

    ``proceed``: whether the next cycle runs (the ``dsl.If`` condition); ``budget``: images the
    next selection takes (select-batch's input); ``summary``: the cycle's summary row as JSON.
    """
    import json
    from typing import NamedTuple

    from activedet.pipeline import steps

    row = json.loads(steps.finish_cycle(experiment, run_root, cycle, parent_run_id, cycle_run_id, eval_result, pseudo_result))
    CycleEnd = NamedTuple("CycleEnd", [("proceed", bool), ("budget", int), ("summary", str)])  # noqa: UP014 (KFP reads it)
    return CycleEnd(bool(row["continue"]), int(row["budget"]), json.dumps(row))


def cycle_gate(proceed: bool) -> bool:
    """finish-cycle's ``proceed`` as a single output: the ``dsl.If`` condition.

    kfp.local evaluates a condition on one of several named outputs as false (the branch is
    skipped silently); on a single output it works, here and on a cluster.
    """
    return proceed


def score_unlabeled(experiment: str, run_root: str, cycle: int, cycle_run_id: str, shard: int) -> str:
    """activedet.stages.score_unlabeled on one shard of the pool."""
    from activedet.pipeline import steps

    return steps.run_stage("score-unlabeled", experiment, run_root, cycle, cycle_run_id, shard=shard)


def merge_scores(experiment: str, run_root: str, cycle: int, cycle_run_id: str, shard_results: list = []) -> str:  # noqa: B006
    """activedet.stages.merge_scores: the shards' tables into one (on a cluster, shard results fan the ParallelFor in)."""
    from activedet.pipeline import steps

    return steps.run_stage("merge-scores", experiment, run_root, cycle, cycle_run_id)


def select_batch(experiment: str, run_root: str, cycle: int, cycle_run_id: str, budget: int) -> str:
    """activedet.stages.select_batch: the next batch of ``budget`` images (finish-cycle's typed output)."""
    from activedet.pipeline import steps

    return steps.run_stage("select-batch", experiment, run_root, cycle, cycle_run_id, budget=budget)


def label_batch(experiment: str, run_root: str, cycle: int, cycle_run_id: str) -> str:
    """activedet.stages.oracle: reveal the selected images' ground truth (simulation)."""
    from activedet.pipeline import steps

    return steps.run_stage("oracle", experiment, run_root, cycle, cycle_run_id)


def export_batch(experiment: str, run_root: str, cycle: int) -> str:
    """activedet.labels.export_batch: the selected batch as COCO JSON + manifest (production)."""
    from activedet.pipeline import steps

    return steps.export_batch(experiment, run_root, cycle)


def finish_run(experiment: str, run_root: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: budget curve and summary, parent MLflow run closed with the run's state."""
    from activedet.pipeline import steps

    return steps.finish_run(experiment, run_root, status.state)


#: component function -> the stage it runs (activedet.stages.STAGES)
STAGE_OF = {
    init: "init",
    train_teacher: "train-teacher",
    generate_pseudo_labels: "generate-pseudo-labels",
    train_student_ssl: "train-student-ssl",
    evaluate: "evaluate",
    score_unlabeled: "score-unlabeled",
    merge_scores: "merge-scores",
    select_batch: "select-batch",
    label_batch: "oracle",
}
#: glue steps around the stages (no stage of their own): CPU image
GLUE = (start_run, start_cycle, finish_cycle, cycle_gate, export_batch, finish_run)


def _kinds() -> dict:
    from activedet.stages import image_kind

    return {**{f: "cpu" for f in GLUE}, **{f: image_kind(stage) for f, stage in STAGE_OF.items()}}


#: component function -> "gpu" or "cpu" image (a stage's from its module's IMAGE)
KINDS = _kinds()


def make_components(registry: str | None = None) -> SimpleNamespace:
    """KFP components for every step, bound to the activedet images of ``registry``."""
    gpu, cpu = images.gpu_image(registry), images.cpu_image(registry)
    out = {}
    for func, kind in KINDS.items():
        out[func.__name__] = dsl.component(func=func, base_image=gpu if kind == "gpu" else cpu, install_kfp_package=False)
    return SimpleNamespace(**out)


def is_gpu(component_name: str) -> bool:
    """Whether the component of that name (``train_teacher`` or ``train-teacher``) runs on a GPU node."""
    key = component_name.replace("-", "_")
    return any(f.__name__ == key and kind == "gpu" for f, kind in KINDS.items())
