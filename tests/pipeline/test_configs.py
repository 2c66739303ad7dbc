"""Every shipped config validates, and finishes two cycles through kfp.local at tiny sizes.

The kfp.local runs are also the end-to-end check of the active-learning pipeline (ledgers, score
shards, summary rows, budget curve, MLflow run tree): a config that cannot finish a cycle fails CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activedet.cli.main import main
from activedet.pipeline.plan import load_experiment

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def tiny(data: dict) -> dict:
    """The config's methods (filter, score, strategy, SSL, labeling) at sizes a 2-core CI finishes in minutes."""
    training = {**data.get("training", {}), "preset": "tiny", "preset_options": {}, "teacher_iterations": 2,
                "student_iterations": 2, "batch_size": 2, "num_workers": 0, "checkpoint_every": 100,
                "backbone_weights": None, "init_checkpoint": None}
    acquisition = {**data.get("acquisition", {}), "shards": min(2, data.get("acquisition", {}).get("shards", 1))}
    return {
        **data,
        "dataset": {"synth": {"sequences": 8, "frames": 2, "seed": 0, "height": 64, "width": 128}},
        "store_root": None,
        "device": "cpu",
        "initial_size": 4,
        "budget": 2,
        "cycles": 2 if data.get("labeling", "oracle") == "oracle" else 1,
        "training": training,
        "pseudo_labels": {**data.get("pseudo_labels", {}), "max_pool_images": 4,
                          "shards": min(2, data.get("pseudo_labels", {}).get("shards", 1))},
        "acquisition": acquisition,
        "stopping": {**data.get("stopping", {}), "budget_cap": None, "target_ap": None},
        "mlflow": {**data.get("mlflow", {}), "tracking_uri": None},
    }


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_validates(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def uncomment_mean_teacher(text: str) -> str:
    """The config with its commented ``# mode: mean_teacher`` block (it and the comment lines right after it) switched on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# mode: mean_teacher")
    indent = lines[start].index("#")
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * indent + "# "):
        end += 1
    on = [line[:indent] + line[indent + 2:] for line in lines[start:end]]
    return "\n".join(lines[:start] + on + lines[end:]) + "\n"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_mean_teacher_option_validates(path, tmp_path, capsys):
    from activedet.pipeline import plan

    text = uncomment_mean_teacher(path.read_text())
    (tmp_path / path.name).write_text(text)
    assert main(["validate", str(tmp_path / path.name)]) == 0
    exp = load_experiment(tmp_path / path.name)
    student = plan.stage_config("train-student-ssl", exp, "/tmp/run", 0)
    assert student.mode == "mean_teacher" and student.mean_teacher.act_every == yaml.safe_load(text)["ssl"]["mean_teacher"]["act_every"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_runs_two_cycles(path, tmp_path):
    from activedet.pipeline.local import run_local

    exp = load_experiment(tiny(yaml.safe_load(path.read_text())))
    outcome = run_local(exp, tmp_path / "run")
    assert outcome.state == "SUCCEEDED"
    _check_outputs(exp, outcome, tmp_path / "run")


def _check_outputs(exp, outcome, run_dir: Path) -> None:
    """Ledgers, score shards, summary rows, budget curve and the MLflow run tree of a local run."""
    import json

    from mlflow import MlflowClient

    from activedet.al.ledger import counts, read_ledger

    lay, I, B = outcome.layout, exp.initial_size, exp.budget  # noqa: E741 (the papers' names)
    labeled = [I + k * B for k in range(exp.cycles)]
    # The ledger each cycle trained on holds I + k*B labeled images; earlier ledgers are untouched.
    assert [counts(read_ledger(lay.ledger(k))[0])["labeled"] for k in range(exp.cycles)] == labeled
    from activedet.pipeline.plan import scores_needed

    shards = exp.acquisition.shards if scores_needed(exp) else 0  # random / uniform select without scores
    assert all((run_dir / "store" / "cycle-00" / "scores" / f"shard-{i:02d}" / "_MANIFEST.json").exists() for i in range(shards))
    assert (run_dir / "store" / "cycle-00" / "scores").exists() == bool(shards)
    # pseudo-labels: none for the mean teacher (it labels every batch); sharded: every shard, then one merge
    pseudo_shards = exp.pseudo_labels.shards if exp.ssl.needs_pseudo_labels and exp.pseudo_labels.shards > 1 else 0
    cycle0 = run_dir / "store" / "cycle-00"
    assert all((cycle0 / "pseudo_candidates" / f"shard-{i:02d}" / "_MANIFEST.json").exists() for i in range(pseudo_shards))
    assert (cycle0 / "pseudo_labels").exists() == exp.ssl.needs_pseudo_labels
    if pseudo_shards:
        merged = json.loads((cycle0 / "pseudo_labels" / "metrics.json").read_text())
        assert merged["shards"] == pseudo_shards and outcome.rows[0]["pseudo_labels"] == merged["pseudo_boxes"]

    assert [r["cycle"] for r in outcome.rows] == list(range(exp.cycles))
    assert [r["labeled"] for r in outcome.rows] == labeled
    for row in outcome.rows:
        assert 0.0 <= row["AP"] <= 1.0 and 0.0 <= row["AP50"] <= 1.0
        assert (row["pseudo_labels"] is not None) == exp.ssl.needs_pseudo_labels
    assert outcome.rows[-1]["reason"] == "last cycle"
    assert outcome.budget_curve is not None and outcome.budget_curve.stat().st_size > 0

    # MLflow (sqlite): a finished parent run with one child run per cycle.
    assert outcome.tracking_uri == f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(exp.mlflow.experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("activedet.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent and r.data.tags.get("activedet.arm") == "main"]
    assert sorted(r.data.tags["activedet.cycle"] for r in children) == [str(k) for k in range(exp.cycles)]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["strategy"] == exp.acquisition.strategy
        names = set(child.data.metrics)
        assert {"metrics.AP", "metrics.AP50", "labeled_count", "train-teacher.seconds"} <= names
        assert not names & {"AP", "AP50", "eval.AP", "evaluate.AP", "eval/AP"}  # one name per quantity
        assert {"cycle_metrics.json", "per_class_ap.png"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    assert sorted(m.step for m in client.get_metric_history(parent, "metrics.AP50")) == labeled  # step = labeled count
    assert "budget_curve.png" in {a.path for a in client.list_artifacts(parent)}
    summary = json.loads((run_dir / "store" / "summary" / "summary.json").read_text())
    assert summary["state"] == "SUCCEEDED" and len(summary["cycles"]) == exp.cycles
    # Label efficiency of the run (AUC@B, metric@B) in the summary and on the parent run.
    from activedet.pipeline.report import label_efficiency

    assert summary["label_efficiency"] == pytest.approx(label_efficiency(summary["cycles"]), nan_ok=True)
    parent_metrics = client.get_run(parent).data.metrics
    assert {"auc.AP", "auc.AP50", "budget_pct_final"} <= set(parent_metrics)
    assert parent_metrics["auc.AP50"] == pytest.approx(summary["label_efficiency"]["auc.AP50"])
    _check_baselines(exp, outcome, summary, client, parent, runs, labeled)


def _check_baselines(exp, outcome, summary, client, parent, runs, labeled) -> None:
    """Each baseline arm: same cycle 0, its own cycles, curves and the comparison in summary, PNG and parent run."""
    from activedet.al.selection import read_selection
    from activedet.pipeline.layout import RunLayout
    from activedet.pipeline.report import compare_arms

    assert set(summary.get("baselines", {})) == set(exp.baselines) == set(outcome.baselines)
    for arm in exp.baselines:
        b = summary["baselines"][arm]
        assert [r["cycle"] for r in b["cycles"]] == list(range(exp.cycles)) and b["cycles"][0] == summary["cycles"][0]
        assert [r["labeled"] for r in b["cycles"]] == labeled and b["cycles"][1]["strategy"] == arm
        assert b["vs"] == pytest.approx(compare_arms(summary["cycles"], b["cycles"]), nan_ok=True)
        arm_lay = RunLayout(outcome.run_root, exp.arm(arm), arm)
        assert set(read_selection(arm_lay.selection(0)).column("strategy").to_pylist()) == {arm}  # its own batch from cycle 0
        assert arm_lay.ledger(0) == outcome.layout.ledger(0) and arm_lay.ledger(1) != outcome.layout.ledger(1)
        arm_runs = [r for r in runs if r.data.tags.get("activedet.arm") == arm and r.data.tags.get("activedet.kind") == "cycle"]
        assert sorted(r.data.tags["activedet.cycle"] for r in arm_runs) == [str(k) for k in range(1, exp.cycles)]
        steps = sorted(m.step for m in client.get_metric_history(parent, f"baselines.{arm}.metrics.AP50"))
        assert steps == labeled[1:]
        metrics = client.get_run(parent).data.metrics
        assert metrics[f"vs_{arm}.auc_diff.AP50"] == pytest.approx(b["vs"]["auc_diff.AP50"])
