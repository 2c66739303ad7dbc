"""COCO / YOLO import and export on the real coco128 files, messy exports and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from activedet import store
from activedet.cli.main import main
from activedet.data.dataset import load_dataset


def _run(argv, capsys):
    rc = main(["-q", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _boxes_by_file(ds, split=None):
    names = {r["image_id"]: os.path.basename(r["uri"]) for r in ds.images.to_pylist() if split in (None, r["split"])}
    out: dict[str, list] = {}
    for r in ds.boxes.to_pylist():
        if r["image_id"] in names:
            out.setdefault(names[r["image_id"]], []).append([r["category_id"], r["x1"], r["y1"], r["x2"], r["y2"]])
    return out


def _assert_same_boxes(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for name in a:
        x, y = np.array(a[name]), np.array(b[name])
        assert x.shape == y.shape, name
        used: set[int] = set()
        for row in x:  # greedy matching: same category, closest coordinates
            d = np.abs(y - row).max(axis=1)
            d[list(used)] = np.inf
            j = int(d.argmin())
            assert d[j] <= atol, (name, row, y[j])
            used.add(j)


@pytest.fixture(scope="module")
def coco_yolo_pair(coco128, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco128")
    coco, yolo = str(root / "coco"), str(root / "yolo")
    assert main(["-q", "data", "import-coco", str(coco128 / "instances_train2017.json"),
                 "--images", str(coco128 / "images"), "--out", coco]) == 0
    assert main(["-q", "data", "import-yolo", str(coco128 / "data.yaml"), "--out", yolo]) == 0
    return load_dataset(coco), load_dataset(yolo)


def test_coco_and_yolo_give_the_same_boxes(coco_yolo_pair, coco128):
    coco, yolo = coco_yolo_pair
    assert coco.images.num_rows == 128 and coco.boxes.num_rows == 929
    assert sorted(set(yolo.images.column("split").to_pylist())) == ["train", "val"]
    assert coco.class_names == yolo.class_names and coco.category_ids == yolo.category_ids == list(range(1, 81))
    _assert_same_boxes(_boxes_by_file(coco), _boxes_by_file(yolo, "train"), atol=0.01)
    # sizes from the image headers match the COCO JSON
    size = {os.path.basename(r["uri"]): (r["width"], r["height"]) for r in yolo.images.to_pylist() if r["split"] == "train"}
    assert all(size[os.path.basename(r["uri"])] == (r["width"], r["height"]) for r in coco.images.to_pylist())
    # uris point at the original files
    uri = coco.images.column("uri")[0].as_py()
    assert os.path.isabs(uri) and os.path.isfile(uri)
    assert coco.meta["zero_area_dropped"] == 0 and coco.meta["source"] == "coco"


def test_yolo_id_offset(coco128, tmp_path, capsys):
    rc, _, _ = _run(["data", "import-yolo", str(coco128 / "data.yaml"), "--out", str(tmp_path / "y0"), "--id-offset", "0"], capsys)
    assert rc == 0
    ds = load_dataset(str(tmp_path / "y0"))
    assert ds.category_ids[0] == 0 and ds.class_names[0] == "person"


def test_export_import_round_trip(coco_yolo_pair, tmp_path, capsys):
    coco, _ = coco_yolo_pair
    js = tmp_path / "exp.json"
    rc, out, _ = _run(["data", "export-coco", coco.uri, "--out", str(js)], capsys)
    assert rc == 0 and json.loads(out)["num_boxes"] == 929
    exported = json.loads(js.read_text())
    assert exported["annotations"][0]["bbox"][2] > 0  # xywh
    rc, _, _ = _run(["data", "import-coco", str(js), "--images", exported["info"]["images_root"], "--out", str(tmp_path / "again")], capsys)
    assert rc == 0
    again = load_dataset(str(tmp_path / "again"))
    assert again.images.column("image_id").to_pylist() == coco.images.column("image_id").to_pylist()
    assert again.images.column("uri").to_pylist() == coco.images.column("uri").to_pylist()
    _assert_same_boxes(_boxes_by_file(coco), _boxes_by_file(again), atol=2e-3)


def test_synth_export_round_trip_keeps_ids_and_sequences(synth_dataset, tmp_path, capsys):
    js = tmp_path / "val.json"
    rc, _, _ = _run(["data", "export-coco", synth_dataset, "--out", str(js), "--split", "val"], capsys)
    assert rc == 0
    root = json.loads(js.read_text())["info"]["images_root"]
    rc, _, _ = _run(["data", "import-coco", str(js), "--images", root, "--out", str(tmp_path / "re"), "--split", "val"], capsys)
    assert rc == 0
    src, again = load_dataset(synth_dataset), load_dataset(str(tmp_path / "re"))
    val = [r for r in src.images.to_pylist() if r["split"] == "val"]
    rows = again.images.to_pylist()
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in val]
    assert [(r["sequence_id"], r["frame_index"]) for r in rows] == [(r["sequence_id"], r["frame_index"]) for r in val]
    assert set(again.boxes.column("track_id").to_pylist()) <= set(src.boxes.column("track_id").to_pylist())
    _assert_same_boxes(_boxes_by_file(src, "val"), _boxes_by_file(again), atol=2e-3)


def test_messy_export_extra_fields_crowd_zero_area(small_coco, coco128, tmp_path, capsys):
    def edit(data):
        data["info"] = {"cvat": True}
        data["images"][0]["date_captured"] = "2020"
        anns = data["annotations"]
        anns[0]["attributes"] = {"occluded": False, "track_id": 7}
        anns[1]["iscrowd"] = 1
        anns[2]["bbox"] = [10, 10, 0, 5]  # zero width
        anns[3]["segmentation"] = {"counts": "x", "size": [1, 1]}

    ann = small_coco(4, edit)
    n_anns = len(json.loads(ann.read_text())["annotations"])
    rc, out, _ = _run(["data", "import-coco", str(ann), "--images", str(coco128 / "images"), "--out", str(tmp_path / "f")], capsys)
    assert rc == 0
    summary = json.loads(out)
    assert summary["zero_area_dropped"] == 1 and summary["crowd_flagged"] == 1
    ds = load_dataset(str(tmp_path / "f"))
    assert ds.boxes.num_rows == n_anns - 1
    assert ds.boxes.column("iscrowd").to_pylist().count(True) == 1
    assert ds.boxes.column("track_id").to_pylist()[0] == "7"

    rc, out, _ = _run(["data", "import-coco", str(ann), "--images", str(coco128 / "images"), "--out", str(tmp_path / "s"), "--crowd", "skip"], capsys)
    assert rc == 0 and json.loads(out)["crowd_skipped"] == 1
    assert load_dataset(str(tmp_path / "s")).boxes.num_rows == n_anns - 2


def test_skip_missing_files(small_coco, coco128, tmp_path, capsys):
    def edit(data):
        data["images"][1]["file_name"] = "train2017/nope.jpg"

    ann = small_coco(4, edit)
    rc, out, _ = _run(["data", "import-coco", str(ann), "--images", str(coco128 / "images"),
                       "--out", str(tmp_path / "o"), "--skip-missing-files"], capsys)
    assert rc == 0 and json.loads(out)["missing_files_skipped"] == 1
    ds = load_dataset(str(tmp_path / "o"))
    assert ds.images.num_rows == 3 and "2" not in set(ds.boxes.column("image_id").to_pylist())


def _edit_missing(data):
    for im in data["images"][:2]:
        im["file_name"] = "train2017/missing_" + im["file_name"].split("/")[-1]


def _edit_unknown_category(data):
    data["annotations"][1]["category_id"] = 999


def _edit_outside(data):
    data["annotations"][0]["bbox"] = [5000, 5000, 10, 10]


def _edit_bad_bbox(data):
    data["annotations"][0]["bbox"] = [1, 2, 3]


def _edit_not_coco(data):
    del data["annotations"]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_edit_missing, "2 of 4 image file(s) listed in"),
        (_edit_unknown_category, "unknown category"),
        (_edit_outside, "entirely outside"),
        (_edit_bad_bbox, "bbox must be [x, y, w, h]"),
        (_edit_not_coco, "'annotations' must be a list"),
    ],
)
def test_bad_coco_exits_2_and_writes_nothing(small_coco, coco128, tmp_path, capsys, edit, needle):
    ann = small_coco(4, edit)
    out = tmp_path / "out"
    rc, _, err = _run(["data", "import-coco", str(ann), "--images", str(coco128 / "images"), "--out", str(out)], capsys)
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if edit is _edit_missing:
        assert "missing_000000000009.jpg" in err
    assert not store.is_committed(str(out)) and not out.exists()


def test_bad_paths_exit_2(coco128, tmp_path, capsys):
    cases = [
        ["data", "import-coco", str(tmp_path / "no.json"), "--images", str(coco128 / "images"), "--out", str(tmp_path / "a")],
        ["data", "import-coco", str(coco128 / "instances_train2017.json"), "--images", str(tmp_path / "nodir"), "--out", str(tmp_path / "a")],
        ["data", "import-yolo", str(tmp_path / "no.yaml"), "--out", str(tmp_path / "a")],
        ["data", "export-coco", str(tmp_path / "nods"), "--out", str(tmp_path / "x.json")],
    ]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    cases.append(["data", "import-coco", str(bad_json), "--images", str(coco128 / "images"), "--out", str(tmp_path / "a")])
    for argv in cases:
        rc, _, err = _run(argv, capsys)
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "x.json").exists()


def _yolo_tree(tmp_path, coco128, label_text: str | None):
    """A one-image YOLO dataset using a real coco128 image."""
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    src = coco128 / "images" / "train2017" / "000000000009.jpg"
    (tmp_path / "images" / "train" / "a.jpg").write_bytes(src.read_bytes())
    if label_text is not None:
        (tmp_path / "labels" / "train" / "a.txt").write_text(label_text)
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [car, person]\n")
    return tmp_path / "data.yaml"


def test_yolo_polygon_zero_area_and_missing_label(coco128, tmp_path, capsys):
    yaml_path = _yolo_tree(tmp_path, coco128, "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.2 0.5\n0 0.5 0.5 0 0.1\n")
    rc, out, _ = _run(["data", "import-yolo", str(yaml_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0 and json.loads(out)["zero_area_dropped"] == 1
    ds = load_dataset(str(tmp_path / "o"))
    rows = ds.boxes.to_pylist()
    assert (ds.images.column("width")[0].as_py(), ds.images.column("height")[0].as_py()) == (640, 480)
    assert rows[0]["category_id"] == 1 and rows[0]["x1"] == pytest.approx(0.4 * 640)
    assert rows[1]["category_id"] == 2 and rows[1]["y2"] == pytest.approx(0.5 * 480)


@pytest.mark.parametrize(
    "labels, needle",
    [("5 0.5 0.5 0.1 0.1\n", "class index 5 not in names"), ("0 0.5 zero 0.1 0.1\n", "a.txt:1"), ("0 0.5 0.5\n", "expected 4 box values")],
)
def test_bad_yolo_labels_exit_2(coco128, tmp_path, capsys, labels, needle):
    yaml_path = _yolo_tree(tmp_path, coco128, labels)
    rc, _, err = _run(["data", "import-yolo", str(yaml_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_import_coco_with_images_on_s3(s3_bucket, small_coco, coco128, tmp_path, capsys):
    ann = small_coco(3)
    names = [im["file_name"] for im in json.loads(ann.read_text())["images"]]
    for n in names:
        store.upload(coco128 / "images" / n, f"{s3_bucket}/imgs/{n}")
    out = f"{s3_bucket}/datasets/c"
    rc, _, err = _run(["data", "import-coco", str(ann), "--images", f"{s3_bucket}/imgs", "--out", out], capsys)
    assert rc == 0, err
    ds = load_dataset(out)
    assert ds.images.column("uri").to_pylist() == [f"{s3_bucket}/imgs/{n}" for n in names]
    # a missing object under the S3 prefix is reported like a missing file
    bad = small_coco(3, _edit_missing, name="bad.json")
    rc, _, err = _run(["data", "import-coco", str(bad), "--images", f"{s3_bucket}/imgs", "--out", f"{s3_bucket}/datasets/d"], capsys)
    assert rc == 2 and "2 of 3 image file(s)" in err
    assert not store.is_committed(f"{s3_bucket}/datasets/d")


def test_cli_subprocess_smoke(small_coco, coco128, tmp_path):
    ann = small_coco(2, _edit_missing)
    proc = subprocess.run(
        [sys.executable, "-m", "activedet.cli.main", "data", "import-coco", str(ann),
         "--images", str(coco128 / "images"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("activedet: error: 2 of 2 image file(s)")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- image checks at import (issue 11)


def _resize_json(data):
    """Pretend the JSON was labelled on images twice as large (files resized after labelling)."""
    for im in data["images"][:2]:
        im["width"], im["height"] = im["width"] * 2, im["height"] * 2
    for a in data["annotations"]:
        if a["image_id"] in {im["id"] for im in data["images"][:2]}:
            a["bbox"] = [v * 2 for v in a["bbox"]]


def test_rescale_boxes_scales_to_the_files_size(small_coco, coco128, tmp_path, capsys):
    plain, resized = small_coco(4), small_coco(4, _resize_json, name="resized.json")
    images = str(coco128 / "images")
    assert _run(["data", "import-coco", str(plain), "--images", images, "--out", str(tmp_path / "a")], capsys)[0] == 0
    rc, _, err = _run(["data", "import-coco", str(resized), "--images", images, "--out", str(tmp_path / "b")], capsys)
    assert rc == 2 and "2 of 4 image(s)" in err and "--rescale-boxes" in err and not (tmp_path / "b").exists()
    rc, out, _ = _run(["data", "import-coco", str(resized), "--images", images, "--out", str(tmp_path / "b"), "--rescale-boxes"], capsys)
    assert rc == 0 and json.loads(out)["rescaled_images"] == 2
    a, b = load_dataset(str(tmp_path / "a")), load_dataset(str(tmp_path / "b"))
    assert a.images.to_pylist() == b.images.to_pylist()  # the files' sizes
    _assert_same_boxes(_boxes_by_file(a), _boxes_by_file(b), atol=1e-3)


def _bad_files(root):
    """An images folder with two good photos, a 0-byte file, a text file and a truncated JPEG."""
    def edit(data):
        good = [im["file_name"] for im in data["images"][:2]]
        (root / "train2017").mkdir(parents=True)
        for n in good:
            (root / n).write_bytes((root.parent / "src" / n).read_bytes())
        (root / "train2017" / "empty.jpg").write_bytes(b"")
        (root / "train2017" / "text.jpg").write_text("not an image")
        data_ = (root / good[0]).read_bytes()
        (root / "train2017" / "cut.jpg").write_bytes(data_[: len(data_) // 3])
        for im, name in zip(data["images"][2:5], ("empty.jpg", "text.jpg", "cut.jpg"), strict=True):
            im["file_name"] = f"train2017/{name}"
    return edit


def test_skip_bad_images_drops_and_counts_them(small_coco, coco128, tmp_path, capsys):
    root = tmp_path / "imgs"
    shutil.copytree(coco128 / "images", tmp_path / "src")
    ann = small_coco(5, _bad_files(root))
    n_boxes = {im["id"]: 0 for im in json.loads(ann.read_text())["images"]}
    for a in json.loads(ann.read_text())["annotations"]:
        n_boxes[a["image_id"]] += 1
    rc, _, err = _run(["data", "import-coco", str(ann), "--images", str(root), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "3 of 5 image file(s)" in err and "--skip-bad-images" in err
    rc, out, _ = _run(["data", "import-coco", str(ann), "--images", str(root), "--out", str(tmp_path / "o"),
                       "--skip-bad-images", "--workers", "2"], capsys)
    summary = json.loads(out)
    assert rc == 0 and summary["bad_images_skipped"] == 3 and summary["num_images"] == 2
    ids = list(n_boxes)
    assert summary["num_boxes"] == n_boxes[ids[0]] + n_boxes[ids[1]]
    assert summary["boxes_of_skipped_files"] == sum(n_boxes[i] for i in ids[2:])
    assert sorted(load_dataset(str(tmp_path / "o")).images.column("image_id").to_pylist()) == sorted(str(i) for i in ids[:2])


def test_absolute_file_name_inside_the_root_is_stored_as_checked(small_coco, coco128, tmp_path, capsys):
    images = coco128 / "images"

    def edit(data):
        data["images"][0]["file_name"] = str(images / data["images"][0]["file_name"])
        data["images"][1]["file_name"] = "train2017/./../train2017/" + data["images"][1]["file_name"].split("/")[-1]
        data["images"][2]["width"] = float(data["images"][2]["width"])  # integral floats are sizes too
        data["annotations"][0]["iscrowd"] = False
        data["annotations"][1]["iscrowd"] = True

    ann = small_coco(4, edit)
    rc, out, err = _run(["data", "import-coco", str(ann), "--images", str(images), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    data = json.loads(ann.read_text())
    uris = load_dataset(str(tmp_path / "o")).images.column("uri").to_pylist()
    assert uris[0] == data["images"][0]["file_name"]
    assert uris[1] == str(images / "train2017" / data["images"][1]["file_name"].split("/")[-1])
    assert json.loads(out)["crowd_flagged"] == 1


def test_yolo_skip_bad_images(coco128, tmp_path, capsys):
    yaml_path = _yolo_tree(tmp_path, coco128, "0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "images" / "train" / "b.jpg").write_bytes(b"")
    (tmp_path / "labels" / "train" / "b.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    rc, _, err = _run(["data", "import-yolo", str(yaml_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "b.jpg' (empty file (0 bytes))" in err
    rc, out, _ = _run(["data", "import-yolo", str(yaml_path), "--out", str(tmp_path / "o"), "--skip-bad-images"], capsys)
    summary = json.loads(out)
    assert rc == 0 and summary["bad_images_skipped"] == 1 and summary["num_images"] == 1 and summary["num_boxes"] == 1


def test_probe_images_serial_and_threads_agree(coco128, tmp_path):
    from activedet.data.checks import probe_images

    uris = [str(p) for p in sorted((coco128 / "images" / "train2017").iterdir())[:20]]
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff")
    uris += [str(tmp_path / "x.jpg"), str(tmp_path / "nope.jpg")]
    serial, threaded = probe_images(str(coco128), uris, workers=1), probe_images(str(coco128), uris, workers=8)
    assert serial == threaded
    assert all(p.size for p in serial[:20]) and serial[-1].missing and serial[-2].problem and not serial[-2].missing


def test_probe_images_on_s3_reads_big_and_small_objects(s3_bucket, coco128):
    from activedet import store
    from activedet.data.checks import HEAD_BYTES, probe_images

    src = sorted((coco128 / "images" / "train2017").iterdir())
    big = next(p for p in src if p.stat().st_size > HEAD_BYTES * 2)
    store.upload(big, f"{s3_bucket}/i/big.jpg")
    store.write_bytes(f"{s3_bucket}/i/cut.jpg", big.read_bytes()[: HEAD_BYTES + 1000])
    store.write_bytes(f"{s3_bucket}/i/small.png", (tmp := _tiny_png()))
    probes = probe_images(f"{s3_bucket}/i", [f"{s3_bucket}/i/{n}" for n in ("big.jpg", "cut.jpg", "small.png", "gone.jpg")])
    from PIL import Image

    with Image.open(big) as im:
        assert probes[0].size == im.size
    assert probes[1].problem.startswith("truncated JPEG")
    assert probes[2].size == (7, 5) and len(tmp) < HEAD_BYTES
    assert probes[3].missing


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buf, format="PNG")
    return buf.getvalue()


def test_data_after_the_end_marker_is_not_truncation(coco128, tmp_path):
    """Phones append a video after a JPEG's end-of-image marker ("motion photos"): still a complete image."""
    from activedet.data.checks import probe_images

    src = (coco128 / "images" / "train2017" / "000000000009.jpg").read_bytes()
    (tmp_path / "motion.jpg").write_bytes(src + b"ftypmp42" + bytes(5000))
    cut = src[: src.rindex(b"\xff\xd9")]
    (tmp_path / "cut.jpg").write_bytes(cut + bytes(300))  # zero padding where the end marker should be
    motion, padded = probe_images(str(tmp_path), [str(tmp_path / "motion.jpg"), str(tmp_path / "cut.jpg")])
    assert motion.size == (640, 480) and motion.problem is None
    assert padded.problem == "truncated JPEG (no end-of-image marker)"
