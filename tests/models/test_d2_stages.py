"""Every model stage on a detectron2 checkpoint: train-teacher (and its resume), generate-pseudo-labels
(ACT + RPLM, which needs pre-NMS candidates), train-student-ssl (offline), evaluate,
score-unlabeled (entropy, inconsistency, MC dropout, embedding) and ``activedet predict``; the
tables are the schema module's. A small R-18 FPN at 64 px keeps it to seconds on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("detectron2") is None, reason="detectron2 not installed (make test installs ../shared/vendor's wheel)"
)

PRESET = "d2_faster_rcnn_R_50_FPN"
OPTIONS = {
    "min_size": 64, "max_size": 128,
    "overrides": {
        "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 60, "MODEL.RPN.POST_NMS_TOPK_TEST": 30,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    },
}
TRAIN = {"iterations": 4, "batch_size": 2, "warmup_iters": 1, "device": "cpu", "seed": 1, "lr": 0.005}


@pytest.fixture(scope="module")
def d2_run(synth_dataset, tmp_path_factory):
    """A ledger (8 labeled images) and a d2 teacher trained 4 iterations on it."""
    from activedet.stages import init, train_teacher

    root = tmp_path_factory.mktemp("d2")
    ledger = str(root / "ledger")
    init.run(init.Config(dataset_uri=synth_dataset, output_uri=ledger, initial_size=8))
    teacher = str(root / "teacher")
    train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, ledger_uri=ledger, output_uri=teacher, preset=PRESET,
                                           preset_options=OPTIONS, checkpoint_every=0, **TRAIN))
    return {"root": root, "ledger": ledger, "teacher": teacher, "dataset": synth_dataset}


def test_train_teacher_resumes_a_killed_d2_run(d2_run, monkeypatch):
    from activedet import store
    from activedet.models import train
    from activedet.stages import train_teacher

    out = str(d2_run["root"] / "resumed")
    config = train_teacher.Config(dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"], output_uri=out, preset=PRESET,
                                  preset_options=OPTIONS, checkpoint_every=2, **TRAIN)
    real_step = train.Trainer.step

    def dying_step(self, images, targets):
        if self.iteration == 3:
            raise KeyboardInterrupt  # the pod is killed after the checkpoint at iteration 2
        return real_step(self, images, targets)

    monkeypatch.setattr(train.Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_teacher.run(config)
    assert not store.is_committed(out)
    monkeypatch.setattr(train.Trainer, "step", real_step)
    result = train_teacher.run(config)
    assert result.resumed_from == 2 and store.is_committed(out)


def test_pseudo_labels_student_evaluate_on_d2(d2_run):
    from activedet import schema, store
    from activedet.models.checkpoint import read_checkpoint_meta
    from activedet.stages import evaluate, generate_pseudo_labels, train_student_ssl

    root = d2_run["root"]
    pseudo = str(root / "pseudo")
    generate_pseudo_labels.run(generate_pseudo_labels.Config(
        teacher_checkpoint_uri=d2_run["teacher"], dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"], output_uri=pseudo,
        filter="act", filter_params={"rplm": True}, min_score=0.0, max_pool_images=6, device="cpu",
    ))
    boxes = store.read_table(store.join(pseudo, "pseudo_boxes.parquet"))
    schema.validate_boxes(boxes, where="pseudo")
    assert boxes.num_rows > 0 and "reliable" in boxes.column_names
    student = str(root / "student")
    train_student_ssl.run(train_student_ssl.Config(
        teacher_checkpoint_uri=d2_run["teacher"], dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"],
        pseudo_labels_uri=pseudo, output_uri=student, checkpoint_every=0, **{**TRAIN, "iterations": 2},
    ))
    assert read_checkpoint_meta(student)["backend"] == "detectron2"
    ev = str(root / "eval")
    metrics = evaluate.run(evaluate.Config(dataset_uri=d2_run["dataset"], checkpoint_uri=student, output_uri=ev, device="cpu"))
    assert 0.0 <= metrics["AP"] <= 1.0
    schema.validate_boxes(store.read_table(store.join(ev, "predictions.parquet")), where="predictions")


def test_mean_teacher_stage_refuses_a_d2_teacher_in_one_line(d2_run):
    from activedet.errors import ConfigError
    from activedet.stages import train_student_ssl

    config = train_student_ssl.Config(
        teacher_checkpoint_uri=d2_run["teacher"], dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"],
        pseudo_labels_uri=str(d2_run["root"] / "unused"), output_uri=str(d2_run["root"] / "mt"), mode="mean_teacher", **TRAIN,
    )
    with pytest.raises(ConfigError, match="mean_teacher: not available on the detectron2 backend"):
        train_student_ssl.run(config)


def test_score_unlabeled_every_score_on_d2(d2_run):
    from activedet import schema, store
    from activedet.stages import score_unlabeled

    out = str(d2_run["root"] / "scores")
    score_unlabeled.run(score_unlabeled.Config(
        checkpoint_uri=d2_run["teacher"], dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"], output_uri=out,
        scores=["entropy", "inconsistency", "mc_dropout", "embedding"], mc_samples=3, device="cpu", batch_size=4,
    ))
    table = store.read_table(store.join(out, "scores.parquet"))
    schema.validate_scores(table)
    assert {"entropy", "inconsistency", "mc_dropout", "embedding"} <= set(table.column_names)
    assert table.num_rows > 0 and table.column("embedding").type.list_size > 0


def test_predict_cli_on_d2(d2_run, capsys):
    from activedet import store
    from activedet.cli.main import main

    out = str(d2_run["root"] / "pred")
    assert main(["predict", "--checkpoint", d2_run["teacher"], "--dataset", d2_run["dataset"], "--out", out, "--flip-tta",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] > 0
    assert Path(store.local_path(store.join(out, "predictions_flipped.parquet"))).exists()


def test_train_teacher_on_two_gloo_ranks_with_d2(d2_run):
    """Data-parallel training (torch.distributed, gloo on CPU) drives the detectron2 model too."""
    from activedet.models.checkpoint import load_detector
    from activedet.stages import train_teacher

    out = d2_run["root"] / "ddp"
    result = train_teacher.run(train_teacher.Config(
        dataset_uri=d2_run["dataset"], ledger_uri=d2_run["ledger"], output_uri=str(out), preset=PRESET, preset_options=OPTIONS,
        checkpoint_every=0, devices=2, **{**TRAIN, "iterations": 2},
    ))
    assert result.iterations == 2
    training = json.loads((out / "train.json").read_text())
    assert training["distributed"]["world_size"] == 2 and training["distributed"]["global_batch_size"] == 4
    assert load_detector(str(out)).backend.name == "detectron2"
