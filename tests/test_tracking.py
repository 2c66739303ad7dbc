"""MLflow on sqlite keeps its artifacts beside the database, never in the working directory."""

from __future__ import annotations

import os

from activedet.tracking import MlflowTracker


def test_sqlite_artifacts_go_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = MlflowTracker(f"sqlite:///{run_dir / 'mlflow.db'}", experiment="x")
    note = tmp_path / "note.txt"
    note.write_text("hi")
    tracker.log_artifact(note)
    assert not (tmp_path / "mlruns").exists()
    stored = [p for p in (run_dir / "mlartifacts").rglob("note.txt")]
    assert len(stored) == 1 and stored[0].read_text() == "hi"
    assert sorted(os.listdir(tmp_path)) == ["note.txt", "run"]
