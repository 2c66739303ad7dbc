"""Where a pipeline run keeps its outputs in the artifact store.

Every URI a stage reads or writes is derived from the run root and the cycle number, so
components exchange only the run root (a string) and small JSON results, never big artifacts::

    <run_root>/run.json                   run metadata (MLflow parent run id, experiment)
    <run_root>/dataset/                   generated SynthDrive set (when dataset.synth is used)
    <run_root>/ledgers/cycle-KK/          ledger cycle KK trains on (init writes cycle-00,
                                          the oracle of cycle KK writes cycle-KK+1)
    <run_root>/cycle-KK/teacher/          train-teacher output
    <run_root>/cycle-KK/pseudo_labels/    generate-pseudo-labels output (or merge-pseudo-labels when sharded)
    <run_root>/cycle-KK/pseudo_candidates/shard-SS/  candidates of one generate-pseudo-labels shard
    <run_root>/cycle-KK/student/          train-student-SSL output
    <run_root>/cycle-KK/eval/             evaluate output (metrics.json)
    <run_root>/cycle-KK/scores/shard-SS/  score-unlabeled output of one shard
    <run_root>/cycle-KK/scores/merged/    merged scores
    <run_root>/cycle-KK/selection/        select-batch output (selection + pending ledger)
    <run_root>/cycle-KK/export/           labeling: export -- the batch as COCO JSON + manifest
    <run_root>/summary/cycle-KK.json      one summary row per finished cycle
    <run_root>/summary/budget_curve.png   the budget curve (written when the run ends)
    <run_root>/baselines/<arm>/...        a baseline arm (``baselines``): its selections and scores
                                          from cycle 0 on, its ledgers, cycles and summary rows from
                                          cycle 1 on; cycle 0 (ledger, models, eval) is the main run's
"""

from __future__ import annotations

from dataclasses import dataclass

from activedet import store
from activedet.pipeline.experiment import ExperimentConfig


@dataclass(frozen=True)
class RunLayout:
    """URIs of one pipeline run."""

    run_root: str
    experiment: ExperimentConfig
    arm: str = ""  # a baseline arm's strategy name; "" = the main run

    @property
    def arm_root(self) -> str:
        """Where this arm's own outputs live (the run root for the main run)."""
        return store.join(self.run_root, "baselines", self.arm) if self.arm else self.run_root

    def _trained_root(self, cycle: int) -> str:
        return self.run_root if cycle == 0 else self.arm_root  # every arm shares cycle 0

    @property
    def run_json(self) -> str:
        return store.join(self.run_root, "run.json")

    @property
    def dataset(self) -> str:
        return self.experiment.dataset.uri or store.join(self.run_root, "dataset")

    def ledger(self, cycle: int) -> str:
        return store.join(self._trained_root(cycle), "ledgers", f"cycle-{cycle:02d}")

    def cycle_dir(self, cycle: int) -> str:
        """Training outputs of ``cycle`` (teacher, pseudo-labels, student, eval)."""
        return store.join(self._trained_root(cycle), f"cycle-{cycle:02d}")

    def _acquired_dir(self, cycle: int) -> str:
        """What the arm acquires after ``cycle`` (scores, selection, export): always the arm's own."""
        return store.join(self.arm_root, f"cycle-{cycle:02d}")

    def teacher(self, cycle: int) -> str:
        return store.join(self.cycle_dir(cycle), "teacher")

    def pseudo_labels(self, cycle: int) -> str:
        return store.join(self.cycle_dir(cycle), "pseudo_labels")

    def pseudo_candidates(self, cycle: int, shard: int) -> str:
        """One generate-pseudo-labels shard's candidates (``pseudo_labels.shards`` > 1)."""
        return store.join(self.cycle_dir(cycle), "pseudo_candidates", f"shard-{shard:02d}")

    def student(self, cycle: int) -> str:
        return store.join(self.cycle_dir(cycle), "student")

    def model(self, cycle: int) -> str:
        """The cycle's final model: the student when SSL is on, else the teacher."""
        return self.student(cycle) if self.experiment.ssl.enabled else self.teacher(cycle)

    def eval(self, cycle: int) -> str:
        return store.join(self.cycle_dir(cycle), "eval")

    def scores_shard(self, cycle: int, shard: int) -> str:
        return store.join(self._acquired_dir(cycle), "scores", f"shard-{shard:02d}")

    def scores(self, cycle: int) -> str:
        return store.join(self._acquired_dir(cycle), "scores", "merged")

    def selection(self, cycle: int) -> str:
        return store.join(self._acquired_dir(cycle), "selection")

    def export(self, cycle: int) -> str:
        """Production labeling: the batch selected after ``cycle``, exported for annotators."""
        return store.join(self._acquired_dir(cycle), "export")

    def summary_row(self, cycle: int) -> str:
        """The cycle's summary row (a baseline arm's cycle 0 is the main run's row)."""
        return store.join(self._trained_root(cycle), "summary", f"cycle-{cycle:02d}.json")

    @property
    def summary_dir(self) -> str:
        return store.join(self.arm_root, "summary")

    @property
    def budget_curve(self) -> str:
        return store.join(self.summary_dir, "budget_curve.png")
