import contextlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest

from activedet import schema, store
from activedet.errors import ConfigError
from activedet.models.evaluation import coco_evaluate, rarest_classes
from activedet.stages import evaluate


def _val(synth):
    ids = synth.split_ids("val")
    keep = pa.array([i in set(ids) for i in synth.boxes.column("image_id").to_pylist()], pa.bool_())
    return ids, synth.boxes.filter(keep)


def _noisy_predictions(gt: pa.Table, category_ids, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    xyxy = np.stack([gt.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], 1).astype(np.float64)
    wh = np.repeat(xyxy[:, 2:] - xyxy[:, :2], 2, axis=0).reshape(-1, 4)
    noisy = xyxy + rng.normal(0, 0.12, xyxy.shape) * wh
    noisy[:, 2:] = np.maximum(noisy[:, 2:], noisy[:, :2] + 1)
    cats = gt.column("category_id").to_numpy().copy()
    flip = rng.random(len(cats)) < 0.15
    cats[flip] = rng.choice(category_ids, flip.sum())
    ids = gt.column("image_id").to_pylist()
    fp = np.c_[rng.uniform(0, 150, (10, 2)), rng.uniform(0, 150, (10, 2)) + 20]
    fp[:, 2:] += fp[:, :2] - 20
    all_ids = ids + [ids[int(i)] for i in rng.integers(0, len(ids), 10)]
    boxes = np.clip(np.r_[noisy, fp], 0, [256, 128, 256, 128])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return schema.boxes_from_arrays(
        all_ids, boxes, np.r_[cats, rng.choice(category_ids, 10)], rng.uniform(0.05, 1.0, len(boxes)), source="pred"
    )


def test_ground_truth_as_predictions_gives_ap_one(synth):
    ids, gt = _val(synth)
    res = coco_evaluate(synth.boxes, gt, synth.images, synth.categories, image_ids=ids)
    assert res["metrics"]["AP"] == pytest.approx(1.0) and res["metrics"]["AP50"] == pytest.approx(1.0)
    assert all(r["ap"] in (None, pytest.approx(1.0)) for r in res["per_class"])


def test_no_predictions_gives_zero(synth):
    ids, _ = _val(synth)
    res = coco_evaluate(synth.boxes, schema.empty(schema.BOXES), synth.images, synth.categories, image_ids=ids, rare_ids=[5])
    m = res["metrics"]
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AR100"] == 0.0 and m["num_pred"] == 0


def test_agrees_with_pycocotools_run_directly(synth, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids, gt = _val(synth)
    preds = _noisy_predictions(gt, synth.category_ids)
    ours = coco_evaluate(synth.boxes, preds, synth.images, synth.categories, image_ids=ids)

    # the same inputs, converted by hand and fed to pycocotools the documented way (files + loadRes)
    num = {iid: k + 1 for k, iid in enumerate(ids)}
    rows = synth.images.to_pylist()
    gt_json = {
        "images": [{"id": num[r["image_id"]], "width": r["width"], "height": r["height"]} for r in rows if r["image_id"] in num],
        "categories": [{"id": c, "name": n} for c, n in zip(synth.category_ids, synth.class_names, strict=False)],
        "annotations": [
            {"id": k + 1, "image_id": num[b["image_id"]], "category_id": b["category_id"], "iscrowd": 0,
             "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]],
             "area": (b["x2"] - b["x1"]) * (b["y2"] - b["y1"])}
            for k, b in enumerate(gt.to_pylist())
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_json))
    dets = [
        {"image_id": num[b["image_id"]], "category_id": b["category_id"], "score": b["score"],
         "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"], b["y2"] - b["y1"]]}
        for b in preds.to_pylist()
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose(ours["stats"], ev.stats, atol=1e-9)
    assert 0.1 < ours["metrics"]["AP50"] < 1.0  # a non-trivial case
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        expected = p[p > -1].mean() if (p > -1).any() else None
        got = next(r["ap"] for r in ours["per_class"] if r["category_id"] == cat)
        assert (got is None and expected is None) or got == pytest.approx(expected)


def test_rarest_classes():
    assert rarest_classes({1: 50, 2: 3, 3: 3, 4: 10}, 2) == [2, 3]
    assert rarest_classes({1: 5}, 10) == [1]


def test_stage_writes_metrics_table_and_plot(synth, synth_dataset, tmp_path):
    _, gt = _val(synth)
    pred_uri = str(tmp_path / "preds.parquet")
    store.write_table(_noisy_predictions(gt, synth.category_ids, seed=1), pred_uri)
    out = str(tmp_path / "eval")
    res = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=out, rare_k=2))
    assert store.is_committed(out)
    metrics = store.read_json(store.join(out, "metrics.json"))
    assert metrics["metrics"]["AP50"] == res["AP50"] and 0 < res["AP50"] < 1
    assert len(metrics["rare_classes"]) == 2 and "AP_rare" in res
    table = store.read_table(store.join(out, "per_class.parquet"))
    assert table.column("name").to_pylist() == synth.class_names
    assert sum(table.column("rare").to_pylist()) == 2
    assert store.read_bytes(store.join(out, "per_class_ap.png"))[:4] == b"\x89PNG"
    assert store.read_text(store.join(out, "per_class.csv")).startswith("category_id,name,ap,ap50")


def test_stage_with_checkpoint(synth_dataset, untrained_checkpoint, tmp_path):
    out = str(tmp_path / "eval")
    res = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, checkpoint_uri=untrained_checkpoint, output_uri=out, device="cpu"))
    assert 0.0 <= res["AP"] <= 1.0 and res["images_per_s"] > 0
    preds = store.read_table(store.join(out, "predictions.parquet"))
    assert "class_probs" in preds.column_names


def test_config_needs_exactly_one_source():
    from activedet.config import load_config

    with pytest.raises(ConfigError, match="exactly one"):
        load_config(evaluate.Config, {"dataset_uri": "d", "output_uri": "o"})


def _ledger(tmp_path, synth, labeled, name):
    from activedet.al.ledger import new_ledger, write_ledger

    uri = str(tmp_path / name)
    with store.OutputWriter(uri) as out:
        write_ledger(out, new_ledger(synth.split_ids("train"), labeled), cycle=0, parent=None)
    return uri


def test_rare_set_is_fixed_by_the_train_split_not_the_labeled_set(synth, synth_dataset, tmp_path):
    """The rare classes must not change from cycle to cycle as the labeled set grows."""
    _, gt = _val(synth)
    pred_uri = str(tmp_path / "preds.parquet")
    store.write_table(_noisy_predictions(gt, synth.category_ids, seed=1), pred_uri)
    train = synth.split_ids("train")
    rare = []
    for k, labeled in enumerate((train[:3], train[-3:], train)):
        res = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=str(tmp_path / f"e{k}"),
                                           ledger_uri=_ledger(tmp_path, synth, labeled, f"l{k}"), rare_k=2))
        rare.append(store.read_json(store.join(res["output_uri"], "metrics.json"))["rare_classes"])
    counts = evaluate._box_counts(synth, set(train))
    assert rare[0] == rare[1] == rare[2] == rarest_classes(counts, 2)


def test_rare_k_covering_every_class_is_not_reported_and_names_fix_the_set(synth, synth_dataset, tmp_path):
    _, gt = _val(synth)
    pred_uri = str(tmp_path / "preds.parquet")
    store.write_table(_noisy_predictions(gt, synth.category_ids, seed=1), pred_uri)
    every = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=str(tmp_path / "a"),
                                         rare_k=len(synth.category_ids)))
    assert "AP_rare" not in every  # it would only repeat AP
    named = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=str(tmp_path / "b"),
                                         rare_classes=["truck", "cyclist"]))
    by_name = dict(zip(synth.class_names, synth.category_ids, strict=True))
    assert store.read_json(store.join(named["output_uri"], "metrics.json"))["rare_classes"] == [by_name["truck"], by_name["cyclist"]]
    with pytest.raises(ConfigError, match="rare_classes: unknown class 'tram'; valid: car"):
        evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=str(tmp_path / "c"),
                                     rare_classes=["tram"]))


def test_stage_logs_one_name_per_quantity(synth, synth_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    _, gt = _val(synth)
    pred_uri = str(tmp_path / "preds.parquet")
    store.write_table(_noisy_predictions(gt, synth.category_ids, seed=1), pred_uri)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = evaluate.run(evaluate.Config(dataset_uri=synth_dataset, predictions_uri=pred_uri, output_uri=str(tmp_path / "e"),
                                       rare_k=2, mlflow_tracking_uri=db))
    client = MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("activedet-stages").experiment_id])
    names = set(run.data.metrics)
    assert run.data.metrics["metrics.AP50"] == pytest.approx(res["AP50"])
    assert {"metrics.AP", "metrics.AP_rare", "metrics.AP_class.car"} <= names
    assert not [n for n in names if n.startswith(("eval", "AP")) or n in ("AP", "AP50")]
