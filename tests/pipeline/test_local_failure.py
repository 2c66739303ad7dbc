"""A failed local run reads as one line: the failing stage, its error, the log path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from activedet import store
from activedet.pipeline.local import failure_summary

ACTIVEDET = Path(sys.executable).parent / "activedet"

TAIL = [
    "\x1b[36m[KFP Executor 2026-12-02 09:00:01,123 INFO]: Looking for component `train_teacher`",
    "Traceback (most recent call last):",
    '  File "/x/activedet/models/data.py", line 40, in load',
    "activedet.errors.StoreError: cannot decode image /data/ds/images/a.png: broken data stream",
    "09:00:02 - ERROR - Task \x1b[96m'train-teacher'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m",
]


def test_failure_summary_names_the_stage_and_its_activedet_error():
    msg = "Pipeline \x1b[95m'activedet'\x1b[0m finished with status FAILURE. Inner task failed: \x1b[96m'train-teacher'\x1b[0m inside 'cycle-0'."
    task, error = failure_summary(TAIL, msg)
    assert task == "train-teacher"
    assert error == "cannot decode image /data/ds/images/a.png: broken data stream"


def test_failure_summary_labels_a_bug_with_its_type():
    tail = [*TAIL[:3], "KeyError: 'category_id'", TAIL[-1]]
    assert failure_summary(tail, "no task named")[1] == "KeyError: 'category_id'"
    assert failure_summary(tail, "no task named")[0] == "train-teacher"  # from the task line


@pytest.mark.slow
def test_failed_local_run_prints_one_line_without_traceback_or_colour(make_synth, tmp_path):
    ds = Path(make_synth(sequences=8, frames=3, height=64, width=128, val_fraction=0.34, test_fraction=0.0))
    images = pq.read_table(ds / "images.parquet").to_pylist()
    for row in images:  # every train image unreadable: the teacher fails on its first batch
        if row["split"] == "train":
            (ds / row["uri"]).write_bytes(b"not a png")
    manifest = json.loads((ds / store.MANIFEST).read_text())
    for row in images:
        path = ds / row["uri"]
        manifest["files"][row["uri"]] = {"size": path.stat().st_size, "sha256": store.sha256_file(path)}
    (ds / store.MANIFEST).write_text(json.dumps(manifest))
    config = tmp_path / "broken.yaml"
    config.write_text(yaml.safe_dump({
        "name": "broken", "dataset": {"uri": str(ds)}, "initial_size": 4, "budget": 2, "cycles": 1,
        "training": {"preset": "tiny", "teacher_iterations": 2, "student_iterations": 2, "batch_size": 2},
    }))
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([str(ACTIVEDET), "-q", "run", str(config), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("activedet: error: stage train-teacher failed: ")
    assert "not a png" in lines[0] or ".png" in lines[0]
    assert f"full log: {tmp_path / 'run' / 'pipeline.log'}" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "\x1b[" not in proc.stdout + proc.stderr
    assert "Traceback" in (tmp_path / "run" / "pipeline.log").read_text()  # the full story stays in the log
