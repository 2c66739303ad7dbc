"""Active-learning components (one per pipeline step) and their image binding.

The component functions live in the package (:mod:`activedet.pipeline.components`) so the images
carry them; this module re-exports them next to the other component definitions. Each is a thin
call into ``activedet.stages.<stage>.run(Config(...))`` through :mod:`activedet.pipeline.steps`;
``make_components(registry)`` binds them to the GPU image (training, pseudo-labeling, scoring,
evaluation) or the CPU image (bookkeeping, merge, selection, labeling) from :mod:`activedet.images`.
"""

from activedet.pipeline.components import (
    KINDS,
    cycle_gate,
    evaluate,
    finish_cycle,
    finish_run,
    generate_pseudo_labels,
    init,
    is_gpu,
    label_batch,
    make_components,
    merge_scores,
    score_unlabeled,
    select_batch,
    start_cycle,
    start_run,
    train_student_ssl,
    train_teacher,
)

__all__ = [
    "KINDS", "cycle_gate", "evaluate", "finish_cycle", "finish_run", "generate_pseudo_labels", "init", "is_gpu",
    "label_batch", "make_components", "merge_scores", "score_unlabeled", "select_batch", "start_cycle", "start_run",
    "train_student_ssl", "train_teacher",
]
