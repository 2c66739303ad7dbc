"""A train-teacher run killed mid-way continues from its last checkpoint when re-run."""

import json
import os
import signal
import subprocess
import sys
import time

from activedet import store
from activedet.models.train import data_digest
from activedet.stages import train_teacher

SETTINGS = {"iterations": 24, "batch_size": 2, "checkpoint_every": 4, "warmup_iters": 2, "device": "cpu", "seed": 1}


def _latest(out):
    path = os.path.join(out, "_resume", "latest.json")
    return json.loads(open(path).read()) if os.path.exists(path) else None


def test_resume_after_kill(synth_dataset, tmp_path):
    out = str(tmp_path / "teacher")
    cmd = [sys.executable, "-m", "activedet.cli.main", "stage", "train-teacher", "--dataset-uri", synth_dataset, "--output-uri", out]
    for k, v in SETTINGS.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            state = _latest(out)
            if state and state["iteration"] >= 8:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not store.is_committed(out)  # the killed run committed nothing
    killed_at = _latest(out)["iteration"]
    assert 8 <= killed_at < SETTINGS["iterations"]

    result = train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, output_uri=out, **SETTINGS))
    assert result.resumed_from == killed_at
    assert result.iterations == SETTINGS["iterations"]
    assert store.is_committed(out)
    assert not os.path.exists(os.path.join(out, "_resume"))  # resume state is dropped on commit
    meta = json.loads(open(os.path.join(out, "meta.json")).read())
    assert meta["training"]["resumed_from"] == killed_at
    assert meta["data_digest"] == data_digest(synth_dataset, meta_ids(synth_dataset))


def meta_ids(uri):
    from activedet.data.dataset import load_dataset

    return load_dataset(uri).split_ids("train")


def test_resume_state_of_other_settings_is_ignored(synth_dataset, tmp_path):
    out = str(tmp_path / "teacher")
    settings = {**SETTINGS, "iterations": 4, "checkpoint_every": 2}
    # leave a resume state behind as a killed run with another seed would
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.train import ResumeCheckpointer, Trainer

    det = detector_for_dataset("tiny", load_dataset(synth_dataset))
    ck = ResumeCheckpointer(out, det, every=2, fingerprint="someone-else")
    trainer = Trainer(det.model, iter([]), iterations=4)
    trainer.iteration = 2
    ck.save(trainer)
    result = train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, output_uri=out, **settings))
    assert result.resumed_from == 0


def test_mlflow_gets_params_and_loss_curve(synth_dataset, tmp_path):
    from mlflow import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = {**SETTINGS, "iterations": 6, "checkpoint_every": 0}
    train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, output_uri=str(tmp_path / "t"), mlflow_tracking_uri=db, **settings))
    client = MlflowClient(tracking_uri=db)
    exp = client.get_experiment_by_name("activedet-stages")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["preset"] == "tiny" and run.data.params["iterations"] == "6"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 2 and sorted(m.step for m in history)[-1] == 6
    meta = json.loads(open(tmp_path / "t" / "meta.json").read())
    assert meta["mlflow_run_id"] == run.info.run_id


def test_warm_start_from_checkpoint(synth_dataset, untrained_checkpoint, tmp_path):
    from activedet.errors import ActivedetError
    from activedet.models.checkpoint import build_detector, write_checkpoint

    settings = {**SETTINGS, "iterations": 1, "checkpoint_every": 0, "warmup_iters": 0}
    out = str(tmp_path / "warm")
    train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, output_uri=out, init_checkpoint_uri=untrained_checkpoint, **settings))
    meta = json.loads(open(os.path.join(out, "meta.json")).read())
    assert meta["init_checkpoint_uri"] == untrained_checkpoint
    # other classes load but for the predictor (tests/models/test_pretrained.py); other shapes fail
    other = str(tmp_path / "other")
    with store.OutputWriter(other) as w:
        write_checkpoint(w, build_detector("tiny", category_ids=[1], class_names=["bus"], width=16, out_channels=64))
    try:
        train_teacher.run(train_teacher.Config(dataset_uri=synth_dataset, output_uri=str(tmp_path / "x"), init_checkpoint_uri=other, **settings))
    except ActivedetError as exc:
        assert "backbone tensors matched" in str(exc)
    else:
        raise AssertionError("a checkpoint of another architecture was accepted")
