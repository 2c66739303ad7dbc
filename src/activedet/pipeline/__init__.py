"""The active-learning pipeline: experiment config, KFP components and DAG, local runner, reports.

* :mod:`~activedet.pipeline.experiment` -- the typed experiment config (one YAML for all uses);
* :mod:`~activedet.pipeline.layout` / :mod:`~activedet.pipeline.plan` -- store URIs, the stages
  of each cycle (each stage's ``from_experiment`` builds its config) and the load-time validation;
* :mod:`~activedet.pipeline.steps` -- what each component does (MLflow runs, stages, cycle gate);
* :mod:`~activedet.pipeline.components` / :mod:`~activedet.pipeline.dag` -- KFP components and
  the unrolled DAG; :mod:`~activedet.pipeline.local` -- the same DAG through kfp.local;
* :mod:`~activedet.pipeline.report` -- summary table, budget curve, per-class AP plot.
"""
