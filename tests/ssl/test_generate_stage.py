"""generate-pseudo-labels stage end to end on SynthDrive with a tiny random teacher."""

from __future__ import annotations

import pytest

from activedet import store
from activedet.config import load_config
from activedet.errors import ActivedetError, ConfigError
from activedet.stages import generate_pseudo_labels as stage


def config(ssl_setup, tmp_path, **kw):
    ds, ledger, teacher, _, _ = ssl_setup
    base = {"teacher_checkpoint_uri": teacher, "dataset_uri": ds, "ledger_uri": ledger, "output_uri": str(tmp_path / "pl")}
    return load_config(stage.Config, {**base, **kw})


def test_writes_pseudo_boxes_thresholds_and_quality(ssl_setup, tmp_path):
    cfg = config(ssl_setup, tmp_path, filter="act", filter_params={"alpha": 20, "rplm": True}, min_score=0.1)
    res = stage.run(cfg)
    pool = ssl_setup[4]
    assert res["pool_images"] == len(pool)
    man = store.require_committed(cfg.output_uri)
    assert {"pseudo_boxes.parquet", "thresholds.json", "metrics.json"} <= set(man["files"])
    table = store.read_table(store.join(cfg.output_uri, "pseudo_boxes.parquet"))
    assert {"reliable", "class_probs", "score", "category_id"} <= set(table.column_names)
    assert set(table.column("source").to_pylist()) <= {"pseudo"}
    assert set(table.column("image_id").to_pylist()) <= set(pool)
    assert table.num_rows == res["pseudo_boxes"]
    th = store.read_json(store.join(cfg.output_uri, "thresholds.json"))
    assert th["filter"] == "act" and set(th["classes"]) == {"1", "2", "3", "4", "5"}
    metrics = store.read_json(store.join(cfg.output_uri, "metrics.json"))
    assert metrics["quality"]["num_gt"] > 0
    assert set(metrics["quality"]["per_class"]) == {"car", "pedestrian", "cyclist", "truck", "traffic_sign"}


def test_empty_pool_is_error(ssl_setup, tmp_path):
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset

    ds = load_dataset(ssl_setup[0])
    train = ds.split_ids("train")
    ledger = str(tmp_path / "all-labeled")
    with store.OutputWriter(ledger) as out:
        write_ledger(out, new_ledger(train, train), cycle=0, parent=None)
    with pytest.raises(ActivedetError, match="empty pool"):
        stage.run(config(ssl_setup, tmp_path, ledger_uri=ledger))
    assert not store.is_committed(str(tmp_path / "pl"))


def test_teacher_class_mismatch_is_error(ssl_setup, tmp_path):
    from activedet.models.checkpoint import build_detector, upload_checkpoint

    other = build_detector("tiny", category_ids=[1, 2], class_names=["car", "dog"])
    uri = upload_checkpoint(other, str(tmp_path / "other"))
    with pytest.raises(ActivedetError, match="trained on classes"):
        stage.run(config(ssl_setup, tmp_path, teacher_checkpoint_uri=uri))


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [("fixed", {"tau": 1.5}, r"tau must be in \(0, 1\]"), ("nope", {}, "unknown pseudo-label filter"), ("fixed", {"k": 1}, "unknown parameter")],
)
def test_bad_filter_settings_fail_before_the_teacher_runs(ssl_setup, tmp_path, name, params, match):
    cfg = config(ssl_setup, tmp_path, filter=name, filter_params=params, teacher_checkpoint_uri=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=match):
        stage.run(cfg)


def test_quality_metrics_reach_mlflow(ssl_setup, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config(ssl_setup, tmp_path, filter="per_class_topk", filter_params={"k": 40}, min_score=0.1,
                 max_pool_images=5, mlflow_tracking_uri=uri)
    res = stage.run(cfg)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("activedet-stages")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["filter"] == "per_class_topk"
    assert run.data.metrics["pseudo_boxes"] == res["pseudo_boxes"]
    assert "pseudo_recall" in run.data.metrics and "pseudo_car_recall" in run.data.metrics
    pool = store.read_table(store.join(cfg.output_uri, "pool_images.parquet")).column("image_id").to_pylist()
    assert len(pool) == 5 and set(pool) <= set(ssl_setup[4])
