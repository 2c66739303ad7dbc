"""The ingest stage: new images join the images table and the unlabeled pool exactly once."""

from __future__ import annotations

import json

import pytest
from ops_helpers import drop_images, make_base, png_bytes

from activedet import store
from activedet.al.ledger import read_ledger
from activedet.data.dataset import load_dataset
from activedet.errors import ActivedetError, ConfigError
from activedet.stages import ingest


def _cfg(root, src, ds, ledger, n, **kw):
    return ingest.Config(
        source_uri=src, dataset_uri=ds, ledger_uri=ledger,
        out_dataset_uri=store.join(root, f"datasets/v{n}"), out_ledger_uri=store.join(root, f"ledgers/v{n}"), **kw,
    )


def test_ingest_twice_adds_nothing_the_second_time(ops_root):
    ds0, led0 = make_base(ops_root)
    src = store.join(ops_root, "incoming")
    drop_images(src, ["drive7/frame_000010.png", "drive7/frame_000011.png", "drive8/000003.png"])
    store.write_text(store.join(src, "drive7/notes.txt"), "not an image")

    r1 = ingest.run(_cfg(ops_root, src, ds0, led0, 1))
    assert r1["added"] == 3 and r1["num_images"] == 5
    ds1 = load_dataset(r1["dataset_uri"])
    rows = {r["image_id"]: r for r in ds1.images.to_pylist()}
    new = rows["ingest/drive7/frame_000011.png"]
    assert (new["width"], new["height"], new["sequence_id"], new["frame_index"], new["split"]) == (64, 32, "drive7", 11, "train")
    assert rows["ingest/drive8/000003.png"]["sequence_id"] == "drive8"
    assert store.read_bytes(ds1.resolve_uri(rows["a"]["uri"]))  # old images still resolve
    assert ds1.boxes.num_rows == 1 and ds1.class_names == ["car"]
    ledger, meta = read_ledger(r1["ledger_uri"])
    states = dict(zip(ledger.column("image_id").to_pylist(), ledger.column("state").to_pylist(), strict=False))
    assert states == {"a": "labeled", **{i: "unlabeled" for i in r1["added_image_ids"]}}
    assert meta["parent"] == led0

    r2 = ingest.run(_cfg(ops_root, src, r1["dataset_uri"], r1["ledger_uri"], 2))
    assert r2["added"] == 0 and r2["skipped_existing"] == 3 and r2["num_images"] == 5
    assert read_ledger(r2["ledger_uri"])[0].num_rows == 4  # "a" + the three new ones, once

    # new arrivals: one new frame, and one copy of an already-registered image under another key
    drop_images(src, ["drive9/frame_000001.png"], seed0=50)
    store.write_bytes(store.join(src, "copies/frame_000010.png"), store.read_bytes(store.join(src, "drive7/frame_000010.png")))
    r3 = ingest.run(_cfg(ops_root, src, r2["dataset_uri"], r2["ledger_uri"], 3))
    assert r3["added_image_ids"] == ["ingest/drive9/frame_000001.png"]
    assert r3["skipped_duplicate_content"] == 1 and r3["skipped_existing"] == 3


def test_sidecar_manifest_csv_and_json(tmp_path):
    root = str(tmp_path)
    ds0, led0 = make_base(root)
    src = store.join(root, "incoming")
    drop_images(src, ["x/1.png", "x/2.png"], width=40, height=30)
    store.write_text(store.join(src, "manifest.csv"), "path,sequence_id,frame_index,timestamp\nx/1.png,seqA,5,100.5\nx/2.png,seqA,6,\n")
    r = ingest.run(_cfg(root, src, ds0, led0, 1, manifest="manifest.csv"))
    rows = {r["image_id"]: r for r in load_dataset(r["dataset_uri"]).images.to_pylist()}
    assert rows["ingest/x/1.png"]["sequence_id"] == "seqA" and rows["ingest/x/1.png"]["frame_index"] == 5
    assert rows["ingest/x/1.png"]["timestamp"] == 100.5 and rows["ingest/x/2.png"]["timestamp"] is None
    assert rows["ingest/x/2.png"]["width"] == 40

    src2 = store.join(root, "incoming2")
    drop_images(src2, ["y.png"], seed0=9)
    store.write_text(store.join(src2, "m.json"), json.dumps([{"path": "y.png", "sequence_id": "q", "frame_index": 2}]))
    r = ingest.run(_cfg(root, src2, ds0, led0, 2, manifest="m.json"))
    assert load_dataset(r["dataset_uri"]).images.to_pylist()[-1]["sequence_id"] == "q"

    store.write_text(store.join(src2, "bad.json"), json.dumps([{"path": "other.png"}]))
    with pytest.raises(ActivedetError, match="'y.png' is not in manifest bad.json"):
        ingest.run(_cfg(root, src2, ds0, led0, 3, manifest="bad.json"))


def test_bad_inputs(tmp_path):
    root = str(tmp_path)
    ds0, led0 = make_base(root)
    src = store.join(root, "incoming")
    store.write_bytes(store.join(src, "s/broken.png"), b"not a png at all")
    with pytest.raises(ActivedetError, match="cannot read image header of .*broken.png"):
        ingest.run(_cfg(root, src, ds0, led0, 1))
    assert not store.is_committed(store.join(root, "datasets/v1"))
    with pytest.raises(ConfigError, match="path_regex"):
        ingest.run(_cfg(root, src, ds0, led0, 1, path_regex="(unclosed"))
    with pytest.raises(ConfigError, match="out_ledger_uri is required"):
        ingest.run(ingest.Config(source_uri=src, dataset_uri=ds0, out_dataset_uri=store.join(root, "d"), ledger_uri=led0))
    assert png_bytes(2, 2, 0)
