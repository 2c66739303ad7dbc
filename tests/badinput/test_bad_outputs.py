"""Bad outputs, committed inputs, checkpoints, experiment files and S3 faults: one line, exit 2.

Each case asserts the contract of :func:`badinput_helpers.assert_bad_input`: exit code 2, one
stderr line naming the culprit, and the watched locations byte-identical (nothing added, removed
or changed). The first group are the data-destroying cases of issue 11 as regression tests.
"""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from badinput_helpers import assert_bad_input, run_cli

from activedet import store

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def committed_ds(tmp_path_factory) -> Path:
    """A small committed SynthDrive dataset; tests copy it before changing anything."""
    from activedet.data.synth import generate_synthdrive

    out = tmp_path_factory.mktemp("bad-ds") / "ds"
    generate_synthdrive(str(out), sequences=4, frames=3, seed=0, height=64, width=128)
    return out


@pytest.fixture
def ds_copy(committed_ds, tmp_path) -> Path:
    dest = tmp_path / "ds"
    shutil.copytree(committed_ds, dest)
    return dest


@pytest.fixture(scope="module")
def checkpoint(committed_ds, tmp_path_factory) -> Path:
    import torch

    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, write_checkpoint

    torch.manual_seed(0)
    uri = tmp_path_factory.mktemp("bad-ckpt") / "teacher"
    with store.OutputWriter(str(uri)) as out:
        write_checkpoint(out, detector_for_dataset("tiny", load_dataset(str(committed_ds))))
    return uri


@pytest.fixture
def ckpt_copy(checkpoint, tmp_path) -> Path:
    dest = tmp_path / "ckpt"
    shutil.copytree(checkpoint, dest)
    return dest


def _init(ds, out) -> list:
    return ["stage", "init", "--dataset-uri", ds, "--output-uri", out, "--initial-size", "3"]


def _recommit(folder: Path, name: str) -> None:
    """Rewrite ``folder``'s manifest so that ``name`` (changed on purpose) passes size and hash."""
    manifest = json.loads((folder / store.MANIFEST).read_text())
    path = folder / name
    manifest["files"][name] = {"size": path.stat().st_size, "sha256": store.sha256_file(path)}
    (folder / store.MANIFEST).write_text(json.dumps(manifest))


# --------------------------------------------------------------------------- outputs that hold user data


def test_synth_into_a_folder_of_user_files_is_refused(user_images, tmp_path):
    assert_bad_input(["data", "synth", "--out", user_images, "--sequences", "1", "--frames", "1"],
                     f"refusing to replace {user_images}", user_images)


def test_import_coco_out_at_the_images_folder_is_refused(coco128, user_images, tmp_path):
    ann = json.loads((coco128 / "instances_train2017.json").read_text())
    ann["images"] = [im for im in ann["images"] if (user_images / im["file_name"]).is_file()]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in {im["id"] for im in ann["images"]}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    assert_bad_input(["data", "import-coco", path, "--images", user_images, "--out", user_images],
                     f"refusing to replace {user_images}", user_images, path)


def test_init_output_at_the_datasets_parent_is_refused(ds_copy, tmp_path):
    (tmp_path / "unrelated.txt").write_text("mine")
    assert_bad_input(_init(ds_copy, tmp_path), f"refusing to replace {tmp_path}", tmp_path)


def test_output_with_a_foreign_file_added_to_a_committed_output_is_refused(ds_copy, tmp_path):
    out = tmp_path / "ledger"
    assert run_cli(_init(ds_copy, out))[0] == 0
    (out / "notes.md").write_text("my notes")
    assert_bad_input(_init(ds_copy, out), "notes.md", out, ds_copy)


def test_output_with_a_foreign_manifest_is_refused(ds_copy, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "_MANIFEST.json").write_text('["not", "ours"]')
    assert_bad_input(_init(ds_copy, out), "not an activedet manifest", out, ds_copy)


def test_output_that_is_a_file_is_refused(ds_copy, tmp_path):
    target = tmp_path / "ledger"
    target.write_text("a file")
    assert_bad_input(_init(ds_copy, target), "is a file", target, ds_copy)


def test_output_below_a_file_is_refused(ds_copy, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("a file")
    assert_bad_input(_init(ds_copy, target / "ledger"), "is a file", target, ds_copy)


def test_predict_out_at_the_dataset_itself_is_refused_when_it_holds_extra_files(ds_copy, checkpoint, tmp_path):
    (ds_copy / "README.txt").write_text("my dataset notes")
    assert_bad_input(["predict", "--checkpoint", checkpoint, "--dataset", ds_copy, "--out", ds_copy],
                     "README.txt", ds_copy, checkpoint)


def test_failed_rerun_keeps_the_previous_output(ds_copy, tmp_path):
    out = tmp_path / "ledger"
    assert run_cli(_init(ds_copy, out))[0] == 0
    assert_bad_input(["stage", "init", "--dataset-uri", ds_copy, "--output-uri", out, "--initial-size", "999"],
                     "initial_size", out)
    assert store.read_output_table(str(out), "ledger.parquet").num_rows > 0


# --------------------------------------------------------------------------- committed inputs


def _corrupt_table(ds: Path) -> None:
    (ds / "boxes.parquet").write_bytes(b"PAR1 not really parquet PAR1")


def _swap_table(ds: Path) -> None:
    table = pq.read_table(ds / "boxes.parquet")
    pq.write_table(table.slice(0, max(table.num_rows - 1, 0)), ds / "boxes.parquet")


def _unlist_manifest(ds: Path) -> None:
    (ds / store.MANIFEST).unlink()


def _manifest_not_json(ds: Path) -> None:
    (ds / store.MANIFEST).write_bytes(b"\x80\x04not json")


def _manifest_pickle(ds: Path) -> None:
    (ds / store.MANIFEST).write_bytes(pickle.dumps({"files": {}}))


def _remove_listed_file(ds: Path) -> None:
    (ds / "categories.parquet").unlink()


def _same_size_other_bytes(ds: Path) -> None:
    data = bytearray((ds / "images.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ds / "images.parquet").write_bytes(bytes(data))


def _wrong_schema_recommitted(ds: Path) -> None:
    pq.write_table(pa.table({"image_id": ["x"]}), ds / "boxes.parquet")
    _recommit(ds, "boxes.parquet")


def _manifest_files_not_mapping(ds: Path) -> None:
    (ds / store.MANIFEST).write_text(json.dumps({"files": ["images.parquet"]}))


DATASET_FAULTS = {
    "table-not-parquet": (_corrupt_table, "boxes.parquet"),
    "table-replaced": (_swap_table, "boxes.parquet"),
    "no-manifest": (_unlist_manifest, "incomplete output"),
    "manifest-not-json": (_manifest_not_json, store.MANIFEST),
    "manifest-is-a-pickle": (_manifest_pickle, store.MANIFEST),
    "manifest-files-not-a-mapping": (_manifest_files_not_mapping, store.MANIFEST),
    "listed-file-missing": (_remove_listed_file, "categories.parquet"),
    "bit-flip-same-size": (_same_size_other_bytes, "images.parquet"),
    "wrong-schema": (_wrong_schema_recommitted, "boxes.parquet"),
}


@pytest.mark.parametrize("fault", sorted(DATASET_FAULTS))
def test_damaged_dataset_is_one_line(fault, ds_copy, tmp_path):
    damage, culprit = DATASET_FAULTS[fault]
    damage(ds_copy)
    assert_bad_input(_init(ds_copy, tmp_path / "ledger"), culprit, ds_copy, tmp_path / "ledger")


def test_missing_dataset_is_one_line(tmp_path):
    assert_bad_input(_init(tmp_path / "nope", tmp_path / "ledger"), "nope", tmp_path)


# --------------------------------------------------------------------------- checkpoints


def _ckpt_no_manifest(ck: Path) -> None:
    (ck / store.MANIFEST).unlink()


def _ckpt_pickled_meta(ck: Path) -> None:
    (ck / "meta.json").write_bytes(pickle.dumps({"preset": "tiny"}))
    _recommit(ck, "meta.json")


def _ckpt_meta_missing_keys(ck: Path) -> None:
    (ck / "meta.json").write_text(json.dumps({"preset": "tiny"}))
    _recommit(ck, "meta.json")


def _ckpt_meta_not_object(ck: Path) -> None:
    (ck / "meta.json").write_text("[1, 2]")
    _recommit(ck, "meta.json")


def _ckpt_weights_garbage(ck: Path) -> None:
    (ck / "model.safetensors").write_bytes(b"\x00" * 64)
    _recommit(ck, "model.safetensors")


def _ckpt_weights_truncated(ck: Path) -> None:
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])


def _ckpt_weights_tampered(ck: Path) -> None:
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-8] ^= 0x01
    (ck / "model.safetensors").write_bytes(bytes(data))


def _ckpt_unknown_preset(ck: Path) -> None:
    meta = json.loads((ck / "meta.json").read_text())
    meta["preset"] = "resnet9000"
    (ck / "meta.json").write_text(json.dumps(meta))
    _recommit(ck, "meta.json")


def _ckpt_other_classes(ck: Path) -> None:
    meta = json.loads((ck / "meta.json").read_text())
    meta["class_names"] = [f"x{i}" for i in meta["class_names"]]
    (ck / "meta.json").write_text(json.dumps(meta))
    _recommit(ck, "meta.json")


CHECKPOINT_FAULTS = {
    "no-manifest": (_ckpt_no_manifest, "has no _MANIFEST.json"),
    "meta-is-a-pickle": (_ckpt_pickled_meta, "meta.json"),
    "meta-missing-keys": (_ckpt_meta_missing_keys, "meta.json"),
    "meta-not-an-object": (_ckpt_meta_not_object, "meta.json"),
    "weights-not-safetensors": (_ckpt_weights_garbage, "model.safetensors"),
    "weights-truncated": (_ckpt_weights_truncated, "model.safetensors"),
    "weights-tampered": (_ckpt_weights_tampered, "sha256"),
    "unknown-preset": (_ckpt_unknown_preset, "resnet9000"),
    "other-classes": (_ckpt_other_classes, "classes"),
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_damaged_checkpoint_is_one_line(fault, committed_ds, ckpt_copy, tmp_path):
    damage, culprit = CHECKPOINT_FAULTS[fault]
    damage(ckpt_copy)
    out = tmp_path / "eval"
    assert_bad_input(["stage", "evaluate", "--dataset-uri", committed_ds, "--checkpoint-uri", ckpt_copy,
                      "--output-uri", out], culprit, ckpt_copy, out)


def test_missing_checkpoint_is_one_line(committed_ds, tmp_path):
    assert_bad_input(["stage", "evaluate", "--dataset-uri", committed_ds, "--checkpoint-uri", tmp_path / "gone",
                      "--output-uri", tmp_path / "eval"], "not a checkpoint", tmp_path)


# --------------------------------------------------------------------------- experiment files


EXPERIMENTS = {
    "not-yaml": b"experiment: [unclosed\n",
    "not-a-mapping": b"- just\n- a list\n",
    "latin-1": "name: caf\xe9\n".encode("latin-1"),
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00",
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(EXPERIMENTS))
def test_unreadable_experiment_file_is_one_line(case, tmp_path):
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(EXPERIMENTS[case])
    assert_bad_input(["compile", path, "-o", tmp_path / "out.yaml"], path.name, tmp_path)


def test_missing_experiment_file_is_one_line(tmp_path):
    assert_bad_input(["compile", tmp_path / "nope.yaml", "-o", tmp_path / "out.yaml"], "nope.yaml", tmp_path)


# --------------------------------------------------------------------------- S3 faults


@pytest.fixture
def silent_endpoint(monkeypatch):
    """An HTTP endpoint on loopback that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _point_s3_at(monkeypatch, url)
    monkeypatch.setenv("ACTIVEDET_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("ACTIVEDET_S3_MAX_ATTEMPTS", "1")
    yield url
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()
    store._clients.clear()


def _point_s3_at(monkeypatch, url: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    store._clients.clear()


def test_hung_endpoint_is_one_line_naming_endpoint_and_operation(silent_endpoint, tmp_path):
    line = assert_bad_input(_init("s3://bucket/ds", tmp_path / "ledger"), silent_endpoint, tmp_path)
    assert "did not answer" in line and "during HeadObject" in line


def test_hung_endpoint_on_output_is_one_line(silent_endpoint, committed_ds, tmp_path):
    line = assert_bad_input(_init(committed_ds, "s3://bucket/ledger"), silent_endpoint, committed_ds)
    assert "did not answer" in line


def test_closed_endpoint_is_one_line(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    _point_s3_at(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ACTIVEDET_S3_MAX_ATTEMPTS", "1")
    assert_bad_input(_init("s3://bucket/ds", tmp_path / "ledger"), f"127.0.0.1:{port}", tmp_path)


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_bad_timeout_setting_is_one_line(value, s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("ACTIVEDET_S3_READ_TIMEOUT", value)
    assert_bad_input(_init(f"{s3_bucket}/ds", tmp_path / "ledger"), "ACTIVEDET_S3_READ_TIMEOUT", tmp_path)


def test_bucket_root_output_is_refused(s3_bucket, committed_ds):
    store.write_bytes(f"{s3_bucket}/keep/me.bin", b"precious")
    assert_bad_input(_init(committed_ds, s3_bucket), "bucket root", committed_ds)
    assert store.read_bytes(f"{s3_bucket}/keep/me.bin") == b"precious"


def test_s3_prefix_with_foreign_objects_is_refused(s3_bucket, committed_ds):
    store.write_bytes(f"{s3_bucket}/team/data/frame-001.jpg", b"jpeg")
    assert_bad_input(_init(committed_ds, f"{s3_bucket}/team/data"), "frame-001.jpg", committed_ds)
    assert store.list_uris(f"{s3_bucket}/team") == [f"{s3_bucket}/team/data/frame-001.jpg"]


def test_missing_bucket_is_one_line(s3_bucket, tmp_path):
    assert_bad_input(_init("s3://no-such-bucket-here/ds", tmp_path / "ledger"), "no-such-bucket-here", tmp_path)


def test_missing_s3_dataset_is_one_line(s3_bucket, tmp_path):
    assert_bad_input(_init(f"{s3_bucket}/nothing", tmp_path / "ledger"), f"{s3_bucket}/nothing", tmp_path)


def test_damaged_s3_table_is_one_line(s3_bucket, committed_ds, tmp_path):
    prefix = f"{s3_bucket}/ds"
    for path in committed_ds.rglob("*"):
        if path.is_file():
            store.upload(path, store.join(prefix, path.relative_to(committed_ds).as_posix()))
    store.write_bytes(store.join(prefix, "boxes.parquet"), b"garbage")
    assert_bad_input(_init(prefix, tmp_path / "ledger"), "boxes.parquet", tmp_path)


# --------------------------------------------------------------------------- resume state (not an error)


def test_corrupt_resume_state_is_discarded_and_training_restarts(ds_copy, tmp_path):
    """kill -9 after a checkpoint, corrupt its optimizer state: the re-run warns and trains from scratch."""
    import subprocess
    import sys
    import time

    out, ledger = tmp_path / "teacher", tmp_path / "ledger"
    assert run_cli(_init(ds_copy, ledger))[0] == 0
    train = ["stage", "train-teacher", "--dataset-uri", str(ds_copy), "--ledger-uri", str(ledger),
             "--output-uri", str(out), "--iterations", "40", "--checkpoint-every", "2", "--batch-size", "2",
             "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "activedet.cli.main", "-q", *train],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "_resume" / "latest.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    optim = next(out.glob("_resume/iter_*/optim.safetensors"))
    optim.write_bytes(b"corrupted by a bad disk")
    code, _, err = run_cli(train)
    assert code == 0, err
    assert "discarding unreadable resume state" in err and "optim.safetensors" in err
    assert store.is_committed(str(out)) and not (out / "_resume").exists()


def test_unreadable_image_on_rerun_keeps_the_previous_checkpoint(ds_copy, tmp_path):
    """Issue 11 finding 2: one unreadable image used to wipe the last good checkpoint."""
    out, ledger = tmp_path / "teacher", tmp_path / "ledger"
    assert run_cli(_init(ds_copy, ledger))[0] == 0
    train = ["stage", "train-teacher", "--dataset-uri", ds_copy, "--ledger-uri", ledger, "--output-uri", out,
             "--iterations", "2", "--batch-size", "2", "--device", "cpu"]
    code, _, err = run_cli(train)
    assert code == 0, err
    labeled = store.read_output_table(str(ledger), "ledger.parquet").to_pylist()
    first = next(r["image_id"] for r in labeled if r["state"] == "labeled")
    images = pq.read_table(ds_copy / "images.parquet").to_pylist()
    uri = next(r["uri"] for r in images if r["image_id"] == first)
    (ds_copy / uri).write_bytes(b"not an image any more")
    _recommit(ds_copy, uri)
    assert_bad_input(train + ["--seed", "1"], uri.rsplit("/", 1)[-1], out)
    assert store.is_committed(str(out))
