"""Atomic outputs: nothing is readable until the manifest is written; re-runs replace cleanly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from activedet import store
from activedet.errors import IncompleteOutputError

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
    with pytest.raises(IncompleteOutputError, match="incomplete output .*no manifest.* at .*run/out"):
        store.require_committed(prefix)
    with pytest.raises(IncompleteOutputError):
        store.read_output_table(prefix, "boxes.parquet")


def test_failed_rerun_invalidates_previous_commit(base):
    """A reader must never mix a new partial output with the old manifest."""
    prefix = store.join(base, "run/out")
    _write_output(prefix)
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix) as out:
            out.write_json("metrics.json", {"ap": 0.9})
            raise RuntimeError("killed")
    with pytest.raises(IncompleteOutputError):
        store.require_committed(prefix)


def test_rerun_over_incomplete_output_replaces_it(base):
    prefix = store.join(base, "run/out")
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix) as out:
            out.write_bytes("stale.bin", b"partial")
            raise RuntimeError("died")
    with store.OutputWriter(prefix) as out:
        out.write_json("metrics.json", {"ap": 0.7})
    assert store.read_output_json(prefix, "metrics.json") == {"ap": 0.7}
    names = sorted(u.rsplit("/", 1)[1] for u in store.list_uris(prefix))
    assert names == ["_MANIFEST.json", "metrics.json"]  # the stale file is gone


def test_resume_dir_kept_only_when_resumable(base):
    prefix = store.join(base, "train")
    ckpt = store.join(prefix, "_resume/last.ckpt")
    store.write_bytes(ckpt, b"ckpt")
    store.write_bytes(store.join(prefix, "partial.bin"), b"x")
    with pytest.raises(RuntimeError):
        with store.OutputWriter(prefix, resumable=True) as out:
            assert store.read_bytes(ckpt) == b"ckpt"  # kept for the resumed run
            assert not store.exists(store.join(prefix, "partial.bin"))
            raise RuntimeError("killed again")
    assert store.exists(ckpt)
    with store.OutputWriter(prefix, resumable=True) as out:
        out.write_json("done.json", {})
    assert not store.exists(ckpt)  # a committed output drops its resume state
    store.write_bytes(ckpt, b"ckpt2")
    with store.OutputWriter(prefix) as out:  # not resumable: everything is cleared
        assert not store.exists(ckpt)
        out.write_json("done.json", {})


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


def test_killed_writer_process_leaves_incomplete_output(base):
    prefix = store.join(base, "killed/out")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.kill()
        proc.wait()
    assert store.exists(store.join(prefix, "boxes.parquet"))  # the data is there ...
    with pytest.raises(IncompleteOutputError, match="incomplete output"):  # ... but not readable
        store.read_output_table(prefix, "boxes.parquet")
    _write_output(prefix)  # re-running the stage works
    assert store.read_output_table(prefix, "boxes.parquet").equals(TABLE)
