"""A 2-cycle run of the real pipeline through kfp.local on a tiny SynthDrive set (minutes on CPU)."""

from __future__ import annotations

import json

import pytest

from activedet.pipeline.experiment import load_experiment

MICRO = {
    "name": "micro",
    "dataset": {"synth": {"sequences": 12, "frames": 4, "seed": 1, "height": 64, "width": 128}},
    "initial_size": 8,
    "budget": 8,
    "cycles": 2,
    "training": {"preset": "tiny", "teacher_iterations": 4, "student_iterations": 4, "batch_size": 4},
    "pseudo_labels": {"filter": "fixed", "params": {"tau": 0.5}},
    "acquisition": {"score": "entropy", "strategy": "topk", "shards": 2},
    "mlflow": {"experiment": "micro"},
}


@pytest.mark.slow
def test_two_cycle_micro_run(tmp_path):
    from mlflow import MlflowClient

    from activedet.al.ledger import counts, read_ledger
    from activedet.pipeline.local import run_local

    exp = load_experiment(MICRO)
    outcome = run_local(exp, tmp_path / "run")
    lay = outcome.layout

    # The ledger the last cycle trained on holds I + B labeled images; cycle 0's is untouched.
    final, _ = read_ledger(lay.ledger(1))
    assert counts(final)["labeled"] == exp.initial_size + exp.budget
    first, _ = read_ledger(lay.ledger(0))
    assert counts(first)["labeled"] == exp.initial_size
    # Both score shards ran and were merged; the selection has B images.
    assert all((tmp_path / "run" / "store" / "cycle-00" / "scores" / f"shard-{i:02d}" / "_MANIFEST.json").exists() for i in range(2))

    # One summary row per cycle, with metrics, and the budget curve.
    assert [r["cycle"] for r in outcome.rows] == [0, 1]
    assert [r["labeled"] for r in outcome.rows] == [8, 16]
    for row in outcome.rows:
        assert 0.0 <= row["AP"] <= 1.0 and 0.0 <= row["AP50"] <= 1.0
        assert row["pseudo_labels"] is not None
    assert outcome.rows[-1]["reason"] == "last cycle"
    assert outcome.budget_curve is not None and outcome.budget_curve.stat().st_size > 0

    # MLflow (sqlite): a finished parent run with two child runs, one per cycle.
    assert outcome.tracking_uri == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("activedet.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.data.tags["activedet.cycle"] for r in children) == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["strategy"] == "topk" and child.data.params["filter"] == "fixed"
        assert {"AP", "AP50", "labeled_count"} <= set(child.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"cycle_metrics.json", "per_class_ap.png"} <= artifacts
    curve = client.get_metric_history(parent, "AP50")
    assert sorted(m.step for m in curve) == [8, 16]  # step = labeled count
    assert "budget_curve.png" in {a.path for a in client.list_artifacts(parent)}
    summary = json.loads((tmp_path / "run" / "store" / "summary" / "summary.json").read_text())
    assert summary["state"] == "SUCCEEDED" and len(summary["cycles"]) == 2
