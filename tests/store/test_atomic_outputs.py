"""Atomic outputs: nothing is readable until the manifest is written; re-runs replace cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from activedet import store
from activedet.errors import IncompleteOutputError, StoreError

TABLE = pa.table({"image_id": ["a", "b", "c"], "v": [1, 2, 3]})


def _write_output(prefix: str, **kwargs) -> None:
    with store.OutputWriter(prefix, **kwargs) as out:
        out.write_table("boxes.parquet", TABLE)
        out.write_json("metrics.json", {"ap": 0.5})


def test_committed_output_is_readable_with_manifest(base):
    prefix = store.join(base, "run/out")
    _write_output(prefix, meta={"stage": "test"})
    manifest = store.require_committed(prefix)
    assert manifest["stage"] == "test"
    assert set(manifest["files"]) == {"boxes.parquet", "metrics.json"}
    assert manifest["files"]["boxes.parquet"]["size"] > 0
    assert len(manifest["files"]["metrics.json"]["sha256"]) == 64
    assert store.read_output_table(prefix, "boxes.parquet").equals(TABLE)
    assert store.read_output_json(prefix, "metrics.json") == {"ap": 0.5}
    assert store.is_committed(prefix)


def test_missing_output_says_no_output(base):
    with pytest.raises(IncompleteOutputError, match="no output at .*never/written"):
        store.require_committed(store.join(base, "never/written"))


def test_exception_inside_writer_leaves_nothing_readable(base):
    prefix = store.join(base, "run/out")
    with pytest.raises(RuntimeError, match="boom"):
        with store.OutputWriter(prefix) as out:
            out.write_table("boxes.parquet", TABLE)
            raise RuntimeError("boom")
    assert not store.is_committed(prefix)
    with pytest.raises(IncompleteOutputError, match="no output at .*run/out"):
        store.require_committed(prefix)
    assert store.list_uris(store.join(base, "run")) == []  # the staging was removed too


def test_failed_rerun_keeps_previous_commit_intact(base):
    """A failed re-run must leave the last good output readable, byte for byte."""
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    before = {u: store.read_bytes(u) for u in store.list_uris(prefix)}
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix) as out:
            out.write_json("metrics.json", {"ap": 0.9})
            out.write_bytes("extra.bin", b"new")
            raise RuntimeError("killed")
    assert {u: store.read_bytes(u) for u in store.list_uris(prefix)} == before
    assert store.read_output_json(prefix, "metrics.json") == {"ap": 0.5}


def test_rerun_replaces_previous_commit_cleanly(base):
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    with store.OutputWriter(prefix) as out:
        out.write_json("metrics.json", {"ap": 0.7})
    assert store.read_output_json(prefix, "metrics.json") == {"ap": 0.7}
    names = sorted(u.rsplit("/", 1)[1] for u in store.list_uris(prefix))
    assert names == ["_MANIFEST.json", "metrics.json"]  # files of the old output are gone
    assert store.list_uris(store.join(base, "run")) == sorted(store.list_uris(prefix))  # no staging left


def test_resume_dir_survives_failures_and_is_dropped_by_commit(base):
    prefix = store.join(base, "train")
    ckpt = store.join(prefix, "_resume/last.ckpt")
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix, resumable=True):
            store.write_bytes(ckpt, b"ckpt")  # what a trainer does while it runs
            raise RuntimeError("killed")
    assert store.read_bytes(ckpt) == b"ckpt"
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix, resumable=True):  # the prefix is ours: re-opening is allowed
            assert store.read_bytes(ckpt) == b"ckpt"  # kept for the resumed run
            raise RuntimeError("killed again")
    with store.OutputWriter(prefix, resumable=True) as out:
        out.write_json("done.json", {})
    assert not store.exists(ckpt)  # a committed output drops its resume state
    assert sorted(u.rsplit("/", 1)[1] for u in store.list_uris(prefix)) == ["_MANIFEST.json", "done.json"]


@pytest.mark.parametrize("foreign", ["photo.jpg", "sub/notes.txt"])
def test_writer_refuses_a_prefix_with_foreign_data(base, foreign):
    prefix = store.join(base, "mine")
    store.write_bytes(store.join(prefix, foreign), b"user data")
    with pytest.raises(store.OutputRefusedError, match=f"refusing to replace .*mine.*{foreign}"):
        with store.OutputWriter(prefix) as out:
            out.write_json("x.json", {})
    assert store.list_uris(prefix) == [store.join(prefix, foreign)]
    assert store.read_bytes(store.join(prefix, foreign)) == b"user data"


def test_writer_refuses_a_committed_output_with_added_foreign_file(base):
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    store.write_bytes(store.join(prefix, "my-notes.txt"), b"keep me")
    with pytest.raises(store.OutputRefusedError, match="my-notes.txt"):
        _write_output(prefix)
    assert store.read_bytes(store.join(prefix, "my-notes.txt")) == b"keep me"


def test_bucket_root_is_never_an_output(s3_bucket):
    store.write_bytes(store.join(s3_bucket, "data/keep.bin"), b"x")
    with pytest.raises(store.OutputRefusedError, match="bucket root"):
        _write_output(s3_bucket)
    with pytest.raises(StoreError, match="bucket root"):
        store.delete_prefix(s3_bucket)
    assert store.read_bytes(store.join(s3_bucket, "data/keep.bin")) == b"x"


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"a file")
    with pytest.raises(store.OutputRefusedError, match="is a file"):
        _write_output(str(target))
    assert target.read_bytes() == b"a file"


def test_manifest_and_json_are_readable_by_other_users(tmp_path):
    prefix = tmp_path / "out"
    _write_output(str(prefix))
    modes = {p.name: p.stat().st_mode & 0o777 for p in prefix.iterdir()}
    data_mode = modes["boxes.parquet"]
    assert modes["_MANIFEST.json"] == data_mode == modes["metrics.json"]
    assert data_mode & 0o044 == 0o044
    store.write_json(str(tmp_path / "run.json"), {})
    assert (tmp_path / "run.json").stat().st_mode & 0o044 == 0o044


def test_reader_checks_sizes_and_hashes(base):
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    other = pa.table({"image_id": ["x", "y", "z"], "v": [9, 8, 7]})  # same schema, other content
    store.write_table(other, store.join(prefix, "boxes.parquet"))
    with pytest.raises(IncompleteOutputError, match="boxes.parquet .*(bytes but its manifest|sha256)"):
        store.read_output_table(prefix, "boxes.parquet")
    store.write_bytes(store.join(prefix, "metrics.json"), b'{"ap": 0.9}\n')
    with pytest.raises(IncompleteOutputError, match="metrics.json"):
        store.require_committed(prefix)


def test_reader_requires_listed_files(base):
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    store._remove(store.join(prefix, "metrics.json"))
    with pytest.raises(IncompleteOutputError, match="metrics.json is listed in .* but missing"):
        store.require_committed(prefix)


def test_interrupted_s3_commit_is_reported_and_rerun_recovers(s3_bucket):
    prefix = store.join(s3_bucket, "run/out")
    _write_output(prefix)
    store.write_json(store.join(prefix, store.WRITING_MARKER), {"writer": "activedet", "committing": True})
    with pytest.raises(IncompleteOutputError, match="interrupted commit"):
        store.require_committed(prefix)
    _write_output(prefix)  # the prefix is still ours: the re-run replaces it
    assert store.read_output_table(prefix, "boxes.parquet").equals(TABLE)
    assert not store.exists(store.join(prefix, store.WRITING_MARKER))


WRITER = textwrap.dedent(
    """
    import sys, time
    import pyarrow as pa
    from activedet import store
    with store.OutputWriter(sys.argv[1]) as out:
        out.write_table("boxes.parquet", pa.table({"a": [1, 2]}))
        print("written", flush=True)
        time.sleep(600)
    """
)


def test_killed_writer_process_leaves_previous_output_and_rerun_cleans_up(base):
    parent = store.join(base, "killed")
    prefix = store.join(parent, "out")
    _write_output(prefix)
    committed = {u: store.read_bytes(u) for u in store.list_uris(prefix)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.kill()
        proc.wait()
    assert {u: store.read_bytes(u) for u in store.list_uris(prefix)} == committed  # untouched by the kill
    assert store.read_output_table(prefix, "boxes.parquet").equals(TABLE)
    assert any(".out.staging-" in u for u in store.list_uris(parent))  # the killed writer's staging
    _write_output(prefix)  # re-running the stage works and removes the stale staging
    assert not any(".out.staging-" in u for u in store.list_uris(parent))
    assert store.read_output_table(prefix, "boxes.parquet").equals(TABLE)


def test_scratch_of_a_killed_writer_is_removed_by_the_next_one(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from activedet import store

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    killed = scratch / f"{store.SCRATCH_PREFIX}{int(dead.stdout)}-abc123"  # a SIGKILLed writer's: no finally ran
    (killed / "sub").mkdir(parents=True)
    live = scratch / f"{store.SCRATCH_PREFIX}{os.getpid()}-live"  # another writer of this (live) process
    live.mkdir()
    foreign = scratch / "activedet-out-notapid-x"
    foreign.mkdir()
    with store.OutputWriter(str(tmp_path / "out")) as out:
        out.write_json("a.json", {"x": 1})
        assert not killed.exists() and live.exists() and foreign.exists()
    assert [p.name for p in scratch.iterdir() if p.name.startswith(f"{store.SCRATCH_PREFIX}{os.getpid()}-")] == [live.name]
