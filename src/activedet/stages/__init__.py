"""Pipeline stages. One module per stage, each with a ``Config`` and a pure ``run(config)``.

Each module also declares ``NAME`` and ``IMAGE`` (``"gpu"`` or ``"cpu"``: the image its KFP
component runs on), optionally ``MULTI_DEVICE = True`` (a training stage that runs one rank per
accelerator of its pod; the other GPU stages use one accelerator and scale out by shards) and, for stages of the pipelines, ``from_experiment(exp, layout, cycle,
**upstream) -> Config``: the one place experiment settings map onto that stage's fields.
:data:`STAGES` is the only list of stages. The CLI (``activedet stage NAME``), the container
entrypoint and the KFP components are thin wrappers around ``run``. Inputs and outputs are URIs
in the artifact store.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from activedet.errors import ActivedetError

#: stage name (CLI spelling) -> module under activedet.stages: the only list of stages
STAGES: dict[str, str] = {
    "init": "init",
    "train-teacher": "train_teacher",
    "generate-pseudo-labels": "generate_pseudo_labels",
    "merge-pseudo-labels": "merge_pseudo_labels",
    "train-student-ssl": "train_student_ssl",
    "evaluate": "evaluate",
    "score-unlabeled": "score_unlabeled",
    "merge-scores": "merge_scores",
    "select-batch": "select_batch",
    "oracle": "oracle",
    "ingest": "ingest",
    "import-labels": "import_labels",
    "promote": "promote",
}


def stage_module(name: str) -> ModuleType:
    """The module implementing stage ``name``; unknown names list the valid ones."""
    key = name.lower().replace("_", "-")
    if key not in STAGES:
        raise ActivedetError(f"unknown stage {name!r}; valid stages: {', '.join(STAGES)}")
    return importlib.import_module(f"activedet.stages.{STAGES[key]}")


def multi_device(name: str) -> bool:
    """Whether stage ``name`` runs one training rank per accelerator of its pod (the module's ``MULTI_DEVICE``)."""
    return bool(getattr(stage_module(name), "MULTI_DEVICE", False))


def image_kind(name: str) -> str:
    """``"gpu"`` or ``"cpu"``: the image stage ``name`` runs on in a cluster (the module's ``IMAGE``)."""
    return stage_module(name).IMAGE
