"""The certainty head through the stages: train-teacher, generate-pseudo-labels, train-student-ssl, evaluate and
score-unlabeled all carry ``loc_quality`` / the ``localization`` score (tiny preset, 64x128)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from activedet import store
from activedet.stages import (
    evaluate,
    generate_pseudo_labels,
    score_unlabeled,
    train_student_ssl,
    train_teacher,
)

HEAD = {"box_head": "certainty", "intervals": 30, "min_size": 64, "max_size": 128}


@pytest.fixture
def small(make_synth, tmp_path):
    """(dataset, ledger, labeled, pool) on a 64x128 SynthDrive with 4 labeled train images."""
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset

    ds = make_synth(sequences=4, frames=3, height=64, width=128)
    train = load_dataset(ds).split_ids("train")
    ledger = str(tmp_path / "ledger")
    with store.OutputWriter(ledger) as out:
        write_ledger(out, new_ledger(train, train[:4]), cycle=0, parent=None)
    return ds, ledger, train[:4], train[4:]


def test_stages_write_loc_quality(small, tmp_path):
    ds, ledger, _, pool = small
    teacher = str(tmp_path / "teacher")
    train_teacher.run(train_teacher.Config(
        dataset_uri=ds, ledger_uri=ledger, output_uri=teacher, preset_options=HEAD, iterations=3, batch_size=2,
        warmup_iters=1, checkpoint_every=0, device="cpu", scale_jitter=None,
    ))
    meta = json.loads((store.local_path(teacher) / "meta.json").read_text())
    assert meta["box_head"]["type"] == "certainty" and meta["box_head"]["intervals"] == 30

    pl = str(tmp_path / "pl")
    generate_pseudo_labels.run(generate_pseudo_labels.Config(
        teacher_checkpoint_uri=teacher, dataset_uri=ds, ledger_uri=ledger, output_uri=pl, filter="dynamic",
        filter_params={"tau": 0.1, "tau_min": 0.05}, min_score=0.0, device="cpu",
    ))
    pseudo = store.read_table(store.join(pl, "pseudo_boxes.parquet"))
    q = np.asarray(pseudo.column("loc_quality").to_pylist(), float)
    assert pseudo.num_rows > 0 and np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()

    student = str(tmp_path / "student")
    res = train_student_ssl.run(train_student_ssl.Config(
        teacher_checkpoint_uri=teacher, dataset_uri=ds, ledger_uri=ledger, pseudo_labels_uri=pl, output_uri=student,
        iterations=2, batch_size=2, warmup_iters=1, checkpoint_every=0, device="cpu",
    ))
    assert res["pseudo_boxes"] > 0
    train = json.loads((store.local_path(student) / "train.json").read_text())
    assert {"unsup/loss_box_interval", "unsup/loss_box_refine"} <= set(train["final_losses"])
    assert json.loads((store.local_path(student) / "meta.json").read_text())["box_head"]["type"] == "certainty"

    ev = str(tmp_path / "eval")
    evaluate.run(evaluate.Config(dataset_uri=ds, checkpoint_uri=teacher, output_uri=ev, device="cpu"))
    preds = store.read_table(store.join(ev, "predictions.parquet"))
    assert "loc_quality" in preds.column_names and preds.column("loc_quality").null_count == 0

    sc = str(tmp_path / "scores")
    score_unlabeled.run(score_unlabeled.Config(
        checkpoint_uri=teacher, dataset_uri=ds, ledger_uri=ledger, output_uri=sc, scores=["localization", "entropy"],
        score_floor=0.0, device="cpu",
    ))
    table = store.read_table(store.join(sc, "scores.parquet"))
    loc = table.column("localization").to_numpy()
    assert table.num_rows == len(pool) and ((loc >= 0) & (loc <= 1)).all() and loc.max() > 0
