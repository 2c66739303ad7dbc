"""`activedet data split` / `merge`: scenes never straddle splits, classes reach val, ids and classes checked."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa
import pytest

from activedet import store
from activedet.cli.main import main
from activedet.data.dataset import load_dataset
from activedet.data.merge import MergeError, merge_datasets
from activedet.data.split import SplitError, SplitSettings, assign_scenes, split_dataset
from activedet.data.split import _Scene as Scene


def _origin_sequence(image_id: str) -> str:
    return image_id.split("_")[0]  # SynthDrive ids are s<seq>_f<frame>


def _strip(uri: str, out: str, *columns: str) -> str:
    """A copy of dataset ``uri`` with ``columns`` of its images table set to null."""
    ds = load_dataset(uri)
    images = ds.images
    for col in columns:
        images = images.set_column(images.schema.get_field_index(col), col, pa.nulls(images.num_rows, images.schema.field(col).type))
    uris = pa.array([ds.resolve_uri(u) for u in images.column("uri").to_pylist()], pa.string())
    images = images.set_column(images.schema.get_field_index("uri"), "uri", uris)
    from activedet.data.dataset import write_dataset_tables

    with store.OutputWriter(out) as w:
        write_dataset_tables(w, images, ds.boxes, ds.categories, {})
    return out


def _sequences_per_split(uri: str) -> dict[str, set]:
    ds = load_dataset(uri)
    splits = defaultdict(set)
    for image_id, split in zip(ds.images.column("image_id").to_pylist(), ds.images.column("split").to_pylist(), strict=True):
        splits[_origin_sequence(image_id)].add(split)
    return splits


@pytest.mark.parametrize("removed, method", [
    ((), "sequence"),
    (("sequence_id",), "time"),
    (("sequence_id", "timestamp"), "time"),  # frame-index runs
    (("sequence_id", "timestamp", "frame_index"), "similarity"),
])
def test_near_duplicate_frames_never_straddle_splits(make_synth, tmp_path, removed, method):
    src = make_synth(sequences=12, frames=5, height=64, width=128, val_fraction=0.0, test_fraction=0.0)
    src = _strip(src, str(tmp_path / "stripped"), *removed)
    summary = split_dataset(src, str(tmp_path / "split"), SplitSettings(val_fraction=0.25, test_fraction=0.15, seed=3))
    assert summary["group_by"] == method
    per_sequence = _sequences_per_split(str(tmp_path / "split"))
    assert all(len(s) == 1 for s in per_sequence.values()), per_sequence
    rows = {r["split"]: r for r in summary["splits"]}
    assert set(rows) == {"train", "val", "test"}
    assert sum(r["images"] for r in rows.values()) == 60


def test_every_class_with_enough_scenes_reaches_val_and_train():
    scenes = [Scene(f"s{i}", 10) for i in range(10)]
    for s in scenes:
        s.classes["car"] = 5
    scenes[2].classes["bike"] = 1  # rare: two scenes only
    scenes[7].classes["bike"] = 2
    scenes[4].classes["bus"] = 1  # one scene only: train keeps it
    split = assign_scenes(scenes, SplitSettings(val_fraction=0.2, seed=0))
    val = {c for s in scenes if split[s.name] == "val" for c in s.classes}
    train = {c for s in scenes if split[s.name] == "train" for c in s.classes}
    assert "bike" in val and "bike" in train
    assert "bus" in train and "bus" not in val
    assert sum(s.images for s in scenes if split[s.name] == "val") == 20


def test_split_output_is_a_new_dataset_with_absolute_uris(synth_dataset, tmp_path):
    out = str(tmp_path / "split")
    split_dataset(synth_dataset, out)
    ds = load_dataset(out)
    assert all(u.startswith("/") for u in ds.images.column("uri").to_pylist())
    assert ds.boxes.num_rows == load_dataset(synth_dataset).boxes.num_rows
    assert store.read_output_json(out, "dataset.json")["parent"] == synth_dataset


def test_split_cli_prints_a_per_split_table(synth_dataset, tmp_path, capsys):
    assert main(["-q", "data", "split", synth_dataset, "--out", str(tmp_path / "s"), "--val-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "train" in out and "val" in out and "car" in out


def test_bad_split_settings_are_errors():
    with pytest.raises(SplitError, match="--val-fraction"):
        SplitSettings(val_fraction=1.5)
    with pytest.raises(SplitError, match="leave images for train"):
        SplitSettings(val_fraction=0.6, test_fraction=0.5)


def _coco_import(coco128, tmp_path, name, ids, split, edit=None):
    data = json.loads((coco128 / "instances_train2017.json").read_text())
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    if edit:
        edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_import_coco_of_several_files_with_their_splits(coco128, tmp_path, capsys):
    first = json.loads((coco128 / "instances_train2017.json").read_text())["images"][:4]
    a = _coco_import(coco128, tmp_path, "a", {im["id"] for im in first[:2]}, "train")
    b = _coco_import(coco128, tmp_path, "b", {im["id"] for im in first[2:]}, "val")
    out = tmp_path / "ds"
    assert main(["-q", "data", "import-coco", f"{a}:train", f"{b}:val", "--images", str(coco128 / "images"), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 2, "val": 2}
    assert load_dataset(str(out)).images.num_rows == 4


def test_merge_checks_categories_and_ids(coco128, tmp_path):
    first = json.loads((coco128 / "instances_train2017.json").read_text())["images"][:4]
    from activedet.data.coco import import_coco

    root = str(coco128 / "images")
    a = import_coco(str(_coco_import(coco128, tmp_path, "a", {first[0]["id"], first[1]["id"]}, "train")), images=root,
                    out_uri=str(tmp_path / "A"))["uri"]
    b = import_coco(str(_coco_import(coco128, tmp_path, "b", {first[2]["id"]}, "val")), images=root, out_uri=str(tmp_path / "B"),
                    split="val")["uri"]
    merged = merge_datasets([a, b], str(tmp_path / "AB"))
    assert merged["splits"] == {"train": 2, "val": 1}
    with pytest.raises(MergeError, match="is in both .*--prefix-ids"):
        merge_datasets([a, a], str(tmp_path / "AA"))
    assert merge_datasets([a, a], str(tmp_path / "AA"), prefix_ids=True)["num_images"] == 4

    def rename(data):
        for c in data["categories"]:
            if c["name"] == "person":
                c["name"] = "pedestrian"

    c = import_coco(str(_coco_import(coco128, tmp_path, "c", {first[3]["id"]}, "val", edit=rename)), images=root,
                    out_uri=str(tmp_path / "C"))["uri"]
    with pytest.raises(MergeError, match="category id 1 is 'person' in .* but 'pedestrian'"):
        merge_datasets([a, c], str(tmp_path / "AC"))
    assert not (tmp_path / "AC").exists()
