"""KFP lightweight components: one per pipeline step, each a thin call into activedet.

The glue steps (MLflow runs, cycle summary and gate, export, exit handler) are written below; the
stage components are generated from the stage table (:data:`activedet.stages.STAGES`) by
:func:`stage_function`, one per stage with a ``from_experiment``. KFP ships each function's source to the
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


def start_cycle(experiment: str, run_root: str, cycle: int, parent_run_id: str, arm: str = "") -> str:
    """Create the cycle's MLflow child run (of the main run, or of baseline arm ``arm``); returns its id."""
    from activedet.pipeline import steps

    return steps.start_cycle(experiment, run_root, cycle, parent_run_id, arm)


def finish_cycle(
    experiment: str, run_root: str, cycle: int, parent_run_id: str, cycle_run_id: str, eval_result: str, pseudo_result: str,
    arm: str = "",
) -> NamedTuple("CycleEnd", [("proceed", bool), ("budget", int), ("summary", str)]):
    """Summary row, MLflow metrics/artifacts and the stop decision of one cycle (typed outputs).

    ``proceed``: whether the next cycle runs (the ``dsl.If`` condition); ``budget``: images the
    next selection takes (select-batch's input); ``summary``: the cycle's summary row as JSON.
    """
    import json
    from typing import NamedTuple

    from activedet.pipeline import steps

    row = json.loads(steps.finish_cycle(experiment, run_root, cycle, parent_run_id, cycle_run_id, eval_result, pseudo_result, arm))
    CycleEnd = NamedTuple("CycleEnd", [("proceed", bool), ("budget", int), ("summary", str)])  # noqa: UP014 (KFP reads it)
    return CycleEnd(bool(row["continue"]), int(row["budget"]), json.dumps(row))


def cycle_gate(proceed: bool) -> bool:
    """finish-cycle's ``proceed`` as a single output: the ``dsl.If`` condition.

    kfp.local evaluates a condition on one of several named outputs as false (the branch is
    skipped silently); on a single output it works, here and on a cluster.
    """
    return proceed


def export_batch(experiment: str, run_root: str, cycle: int) -> str:
    """activedet.labels.export_batch: the selected batch as COCO JSON + manifest (production)."""
    from activedet.pipeline import steps

    return steps.export_batch(experiment, run_root, cycle)


def finish_run(experiment: str, run_root: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: budget curve and summary, parent MLflow run closed with the run's state."""
    from activedet.pipeline import steps

    return steps.finish_run(experiment, run_root, status.state)


#: glue steps around the stages (no stage of their own): CPU image
GLUE = (start_run, start_cycle, finish_cycle, cycle_gate, export_batch, finish_run)

_STAGE_COMPONENT = '''def {func}(experiment: str, run_root: str, cycle: int, cycle_run_id: str{params}, arm: str = "") -> str:
    """activedet.stages.{func}: {summary}"""
    from activedet.pipeline import steps

    return steps.run_stage({stage!r}, experiment, run_root, cycle, cycle_run_id, arm{args})
'''
_TYPES = {"int": int, "str": str, "float": float, "bool": bool}


def stage_function(stage: str):
    """The component function of ``stage``, generated from its module (the stage table is the only list).

    Signature: ``(experiment, run_root, cycle, cycle_run_id)`` plus the upstream values its
    ``from_experiment`` takes (score-unlabeled's ``shard``, select-batch's ``budget``), typed for
    KFP, and ``arm`` (a baseline arm's strategy; "" = the main run). The source is registered with
    :mod:`linecache` because KFP ships a component's source.
    """
    import inspect
    import linecache

    from activedet.stages import stage_module

    module = stage_module(stage)
    func = module.__name__.rsplit(".", 1)[-1]
    upstream = list(inspect.signature(module.from_experiment).parameters.values())[3:]
    params, args = "", ""
    for p in upstream:
        kind = _TYPES[str(p.annotation).split("|")[0].strip()]
        default = "" if p.default in (inspect.Parameter.empty, None) else f" = {p.default!r}"
        params += f", {p.name}: {kind.__name__}{default}"
        args += f", {p.name}={p.name}"
    summary = (module.__doc__ or stage).strip().splitlines()[0].replace('"', "'")
    source = _STAGE_COMPONENT.format(func=func, params=params, args=args, stage=stage, summary=summary)
    filename = f"<activedet component {func}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 (our own template)
    return namespace[func]


def _stage_functions() -> dict:
    from activedet.stages import STAGES, stage_module

    return {name: stage_function(name) for name in STAGES if hasattr(stage_module(name), "from_experiment")}


#: stage name -> its generated component function (every stage with a ``from_experiment``)
STAGE_FUNCTIONS = _stage_functions()


def _kinds() -> dict:
    from activedet.stages import image_kind

    return {**{f: "cpu" for f in GLUE}, **{f: image_kind(stage) for stage, f in STAGE_FUNCTIONS.items()}}


#: component function -> "gpu" or "cpu" image (a stage's from its module's IMAGE)
KINDS = _kinds()


def make_components(registry: str | None = None, *, preset: str | None = None) -> SimpleNamespace:
    """KFP components for every step, bound to the activedet images of ``registry``.

    The model stages (``gpu`` kind) run on the image that has ``preset``'s backend
    (:func:`activedet.images.model_image`: the detectron2 variant for ``d2_*`` presets)."""
    gpu = images.model_image(preset, registry) if preset else images.gpu_image(registry)
    cpu = images.cpu_image(registry)
    out = {}
    for func, kind in KINDS.items():
        out[func.__name__] = dsl.component(func=func, base_image=gpu if kind == "gpu" else cpu, install_kfp_package=False)
    return SimpleNamespace(**out)


def is_gpu(component_name: str) -> bool:
    """Whether the component of that name (``train_teacher`` or ``train-teacher``) runs on a GPU node."""
    key = component_name.replace("-", "_")
    return any(f.__name__ == key and kind == "gpu" for f, kind in KINDS.items())
