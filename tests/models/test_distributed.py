"""Data-parallel training: 2 gloo ranks on CPU (tiny preset, 64x128 images, a few iterations).

The two-rank runs go through the stages' real launcher (torch.distributed elastic, one fresh
interpreter per rank), as a pod with ``devices: 2`` does.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from activedet import store
from activedet.config import load_config
from activedet.models.data import InfiniteSampler, RankBatches
from activedet.ssl.sampler import BalancedBatchSampler
from activedet.stages import train_student_ssl, train_teacher

# no augmentation: one process at batch 4 and two ranks at batch 2 then see the same images
PLAIN = {"device": "cpu", "hflip": 0.0, "scale_jitter": None, "warmup_iters": 2, "seed": 3}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    from activedet.data.synth import generate_synthdrive

    out = tmp_path_factory.mktemp("ddp") / "ds"
    generate_synthdrive(str(out), sequences=6, frames=3, seed=0, height=64, width=128)
    return str(out)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks inherit it: 2 ranks on 2 shared cores


def _history(uri):
    return [loss for _, loss in json.loads(open(os.path.join(uri, "train.json")).read())["loss_history"]]


def test_rank_batches_union_is_the_one_process_batch():
    one = iter(RankBatches(InfiniteSampler(10, seed=1), 4))
    ranks = [iter(RankBatches(InfiniteSampler(10, seed=1), 2, r, 2)) for r in range(2)]
    for _ in range(6):
        assert next(one) == next(ranks[0]) + next(ranks[1])


def test_balanced_sampler_keeps_the_labeled_share_per_replica():
    one = BalancedBatchSampler(7, 30, 4, labeled_fraction=0.5, seed=2)
    ranks = [BalancedBatchSampler(7, 30, 2, labeled_fraction=0.5, seed=2, rank=r, world_size=2) for r in range(2)]
    for i in range(9):
        per_rank = [r.batch(i) for r in ranks]
        assert all(len(lab) == 1 and len(unl) == 1 for lab, unl in per_rank)  # balance in every replica
        lab, unl = one.batch(i)
        assert lab == per_rank[0][0] + per_rank[1][0] and unl == per_rank[0][1] + per_rank[1][1]
    with pytest.raises(Exception, match="rank 2 outside"):
        BalancedBatchSampler(7, 30, 2, rank=2, world_size=2)


def test_two_ranks_learn_like_one_process_at_the_same_global_batch(small_ds, tmp_path):
    from activedet.models.checkpoint import load_detector, read_checkpoint_meta

    common = {"dataset_uri": small_ds, "iterations": 12, "checkpoint_every": 0, **PLAIN}
    one = train_teacher.run(train_teacher.Config(output_uri=str(tmp_path / "one"), batch_size=4, lr=0.02, **common))
    # per-rank batch 2 x 2 ranks = global 4; lr 0.01 x 2 ranks (linear rule) = 0.02
    two = train_teacher.run(train_teacher.Config(output_uri=str(tmp_path / "two"), batch_size=2, lr=0.01, devices=2, **common))
    h1, h2 = _history(one.checkpoint_uri), _history(two.checkpoint_uri)
    assert h2[-1] < 0.85 * h2[0]  # the loss goes down
    assert abs(h2[-1] - h1[-1]) < 0.1 * h1[-1], (h1, h2)
    assert abs(h2[0] - h1[0]) < 0.1 * h1[0]
    meta = read_checkpoint_meta(two.checkpoint_uri)  # same format: model.safetensors + meta.json
    assert meta["training"]["distributed"] == {"world_size": 2, "global_batch_size": 4, "lr": 0.02, "lr_rule": "linear: lr * world_size"}
    assert sorted(os.listdir(two.checkpoint_uri)) == sorted(os.listdir(one.checkpoint_uri))
    keys = load_detector(two.checkpoint_uri).model.state_dict().keys()
    assert keys == load_detector(one.checkpoint_uri).model.state_dict().keys()  # no DDP "module." prefix


def _latest(out):
    path = os.path.join(out, "_resume", "latest.json")
    return json.loads(open(path).read()) if os.path.exists(path) else None


def test_two_ranks_resume_after_kill(small_ds, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"  # the launcher's temp folder, to see what a SIGKILL leaves there
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    settings = {"iterations": 30, "batch_size": 2, "checkpoint_every": 3, "devices": 2, "lr": 0.01, "warmup_iters": 2,
                "device": "cpu", "seed": 1}
    out = str(tmp_path / "teacher")
    cmd = [sys.executable, "-m", "activedet.cli.main", "stage", "train-teacher", "--dataset-uri", small_ds, "--output-uri", out]
    for k, v in settings.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            state = _latest(out)
            if state and state["iteration"] >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
    assert not store.is_committed(out)
    killed_at = _latest(out)["iteration"]
    assert 3 <= killed_at < settings["iterations"]
    result = train_teacher.run(train_teacher.Config(dataset_uri=small_ds, output_uri=out, **settings))
    assert result.resumed_from == killed_at and result.iterations == settings["iterations"]
    assert store.is_committed(out) and not os.path.exists(os.path.join(out, "_resume"))
    # the killed launcher's job folder went with the next launch (no finally ran to remove it)
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("activedet-")]


def test_two_rank_student_trains_labeled_and_pseudo(small_ds, tmp_path):
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, upload_checkpoint
    from activedet.stages import generate_pseudo_labels as gen

    ds = load_dataset(small_ds)
    train = ds.split_ids("train")
    ledger = str(tmp_path / "ledger")
    with store.OutputWriter(ledger) as out:
        write_ledger(out, new_ledger(train, train[:6]), cycle=0, parent=None)
    torch.manual_seed(0)
    teacher = upload_checkpoint(detector_for_dataset("tiny", ds), str(tmp_path / "teacher"))
    pl = str(tmp_path / "pl")
    gen.run(load_config(gen.Config, {"teacher_checkpoint_uri": teacher, "dataset_uri": small_ds, "ledger_uri": ledger,
                                     "output_uri": pl, "filter": "per_class_topk", "min_score": 0.05, "device": "cpu"}))
    cfg = load_config(train_student_ssl.Config, {
        "teacher_checkpoint_uri": teacher, "dataset_uri": small_ds, "ledger_uri": ledger, "pseudo_labels_uri": pl,
        "output_uri": str(tmp_path / "student"), "iterations": 6, "batch_size": 2, "checkpoint_every": 0,
        "warmup_iters": 0, "lr": 0.005, "device": "cpu", "devices": 2,
    })
    res = train_student_ssl.run(cfg)
    assert res["iterations"] == 6 and res["pseudo_images"] > 0
    meta = json.loads(open(os.path.join(cfg.output_uri, "meta.json")).read())
    assert meta["training"]["distributed"]["world_size"] == 2
    assert any(k.startswith("unsup/") for k in meta["training"]["final_losses"])  # every replica had pseudo images
    assert torch.isfinite(torch.tensor(res["final_loss"]))


def test_two_rank_mean_teacher_resumes_after_kill_with_one_ema_teacher(small_ds, tmp_path):
    """mode mean_teacher on 2 gloo ranks, dynamic thresholds: killed, resumed, EMA teacher identical on both ranks."""
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, read_checkpoint_meta, upload_checkpoint

    ds = load_dataset(small_ds)
    train = ds.split_ids("train")
    ledger = str(tmp_path / "ledger")
    with store.OutputWriter(ledger) as out:
        write_ledger(out, new_ledger(train, train[:4]), cycle=0, parent=None)
    torch.manual_seed(0)
    teacher = upload_checkpoint(detector_for_dataset("tiny", ds, min_size=64, max_size=128), str(tmp_path / "teacher"))
    out = str(tmp_path / "student")
    settings = {"teacher_checkpoint_uri": teacher, "dataset_uri": small_ds, "ledger_uri": ledger, "pseudo_labels_uri": "unused",
                "output_uri": out, "iterations": 8, "batch_size": 2, "checkpoint_every": 2, "warmup_iters": 0, "lr": 0.005,
                "device": "cpu", "devices": 2, "mode": "mean_teacher",
                "mean_teacher": {"thresholds": "dynamic", "dynamic": {"seed_images": 4, "update_every": 2}}}
    script = ("import json, sys; from activedet.config import load_config; from activedet.stages import train_student_ssl as s; "
              "s.run(load_config(s.Config, json.loads(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(settings)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            state = _latest(out)
            if state and state["iteration"] >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
    state = _latest(out)
    killed_at = state["iteration"]
    assert not store.is_committed(out) and 2 <= killed_at < settings["iterations"]
    folder = os.path.join(out, "_resume", state["folder"])
    assert {"ema_teacher.safetensors", "dynamic_state.json", "optim.safetensors"} <= set(os.listdir(folder))

    res = train_student_ssl.run(load_config(train_student_ssl.Config, settings))
    assert res["resumed_from"] == killed_at and res["published_model"] == "ema_teacher"
    training = read_checkpoint_meta(out)["training"]
    assert training["distributed"]["world_size"] == 2
    first, second = training["ema_teacher_sha256"]
    assert first == second  # the EMA teacher is the same on both ranks
    assert len(set(training["thresholds_sha256"])) == 1  # so are the online statistics (summed over ranks)
    # the online statistics came back from the checkpoint: one update per iteration over the whole run
    assert training["final_dynamic"]["updates"] == settings["iterations"] and training["final_dynamic"]["refreshed_at"] == 8
    assert any(k.startswith("unsup/") for k in training["final_losses"])
    assert torch.isfinite(torch.tensor(res["final_loss"]))
    assert store.is_committed(out) and not os.path.exists(os.path.join(out, "_resume"))
