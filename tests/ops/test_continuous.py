"""Continuous mode: the KFP pipeline compiles, and its DAG runs two consecutive cycles through kfp.local on persistent state."""

from __future__ import annotations

import pytest
import yaml
from ops_helpers import drop_images

from activedet import labels, store
from activedet.al.ledger import counts, read_ledger
from activedet.data.dataset import load_dataset
from activedet.ops.pipeline import compile_continuous, run_local
from activedet.ops.state import StateStore
from activedet.pipeline.plan import load_experiment

CONFIG = {
    "name": "cont",
    "dataset": {"synth": {"sequences": 6, "frames": 3, "seed": 0, "height": 64, "width": 128}},
    "initial_size": 4,
    "budget": 2,
    "cycles": 1,
    "device": "cpu",
    "training": {"preset": "tiny", "teacher_iterations": 2, "student_iterations": 2, "batch_size": 2, "checkpoint_every": 100},
    "pseudo_labels": {"filter": "fixed", "params": {"tau": 0.5}, "max_pool_images": 4},
    "acquisition": {"score": "entropy", "strategy": "topk"},
}


def _config(tmp_path, **over) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "store_root": str(tmp_path / "store"), **over}))
    return str(path)


def test_continuous_pipeline_compiles(tmp_path):
    package, params = compile_continuous(_config(tmp_path), tmp_path / "continuous.yaml", platform=False)
    spec = next(yaml.safe_load_all(package.read_text()))  # doc 2: platform (k8s) config
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("begin", "ingest", "import-labels", "train-teacher", "train-student-ssl", "evaluate", "promote",
                 "merge-scores", "select-batch", "finish"):
        assert name in tasks, f"{name} missing from the compiled DAG"
    assert set(params) == {"experiment", "state_root", "source_uri", "returns_uri"}
    assert params["state_root"].endswith("cont/continuous")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(params)


@pytest.mark.slow
def test_two_consecutive_cycles(tmp_path):
    exp = load_experiment(_config(tmp_path))
    root = str(tmp_path / "store" / "cont" / "continuous")
    src, returns = store.join(root, "incoming"), store.join(root, "returns")
    drop_images(src, ["drive1/frame_000001.png", "drive1/frame_000002.png"], width=128, height=64)

    c1 = run_local(exp, root, source_uri=src, returns_uri=returns, pipeline_root=tmp_path / "kfp")
    st = StateStore(root)
    s1 = st.read()
    assert s1.version == 1 and s1.cycle == 1 and c1["promoted"] and s1.champion is not None
    assert s1.champion.checkpoint_uri == c1["model_uri"] and c1["init_checkpoint"] is None
    ds1 = load_dataset(s1.dataset_uri)
    assert {"ingest/drive1/frame_000001.png", "ingest/drive1/frame_000002.png"} <= set(ds1.images.column("image_id").to_pylist())
    export1 = store.read_json(store.join(s1.exports[0], labels.COCO_FILE))
    assert len(export1["images"]) == 2 and export1["annotations"] == []
    assert counts(read_ledger(s1.ledger_uri)[0])["pending"] == 2

    # between runs: a new drive arrives and the annotators return the first batch
    drop_images(src, ["drive2/frame_000001.png"], width=128, height=64, seed0=40)
    export1["annotations"] = [{"id": i + 1, "image_id": im["id"], "category_id": export1["categories"][0]["id"],
                               "bbox": [10, 10, 20, 15]} for i, im in enumerate(export1["images"])]
    store.write_json(store.join(returns, "cycle-0001.json"), export1)

    c2 = run_local(exp, root, source_uri=src, returns_uri=returns, pipeline_root=tmp_path / "kfp")
    s2 = st.read()
    assert s2.version == 2 and s2.cycle == 2 and len(s2.lineage) == 2 and len(s2.exports) == 2
    assert c2["init_checkpoint"] == s1.champion.checkpoint_uri  # warm start from the champion
    assert s2.imported == [store.join(returns, "cycle-0001.json")]
    labeled_ids = {im["activedet_image_id"] for im in export1["images"]}
    ds2 = load_dataset(s2.dataset_uri)
    assert labeled_ids <= set(ds2.boxes.column("image_id").to_pylist())
    assert "ingest/drive2/frame_000001.png" in set(ds2.images.column("image_id").to_pylist())
    ledger2 = dict(zip(*[read_ledger(s2.ledger_uri)[0].column(c).to_pylist() for c in ("image_id", "state")], strict=False))
    assert all(ledger2[i] == "labeled" for i in labeled_ids)
    # promotion only on improvement: the champion is c2's model iff its metric beat c1's
    if c2["promoted"]:
        assert s2.champion.checkpoint_uri == c2["model_uri"] and c2["AP"] > c1["AP"]
    else:
        assert s2.champion == s1.champion and c2["AP"] <= c1["AP"]
