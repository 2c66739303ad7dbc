"""Bad imports (COCO, YOLO, labels import): one line naming the culprit, exit 2, nothing touched.

Each case asserts the contract of :func:`badinput_helpers.assert_bad_input` on the inputs (the
annotation file, the user's images) and on ``--out``: for COCO a previous good import sits there
and must survive byte-identical; elsewhere ``--out`` must stay absent. Issue 11 findings 4, 5, 6
and 8 are the cases here; the data checks live in :mod:`activedet.data.checks`.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from badinput_helpers import assert_bad_input, run_cli
from PIL import Image

BIG = 2**31

# --------------------------------------------------------------------------- COCO


@pytest.fixture
def coco_json(coco128, user_images) -> dict:
    """COCO JSON of the user's 4 images (file_names relative to ``user_images``)."""
    data = json.loads((coco128 / "instances_train2017.json").read_text())
    data["images"] = [im for im in data["images"] if (user_images / im["file_name"]).is_file()]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    assert len(data["images"]) == 4 and data["annotations"]
    return data


@pytest.fixture
def coco_case(coco_json, user_images, tmp_path):
    """Factory: write the (edited) JSON, import it once unedited into ``out`` (a previous good
    output that must survive), return (argv, paths to watch, file_name of image 0)."""

    def make(edit):
        good = tmp_path / "good.json"
        good.write_text(json.dumps(coco_json))
        out = tmp_path / "out"
        code, _, err = run_cli(["data", "import-coco", good, "--images", user_images, "--out", out])
        assert code == 0, err
        data = json.loads(json.dumps(coco_json))
        payload = edit(data, user_images)
        ann = tmp_path / "ann.json"
        ann.write_bytes(payload if isinstance(payload, bytes) else json.dumps(data).encode())
        return ["data", "import-coco", ann, "--images", user_images, "--out", out], (ann, user_images, out)

    return make


def _set(path: str, value):
    """Edit: set ``data[key][index][field] = value`` for a path like ``images.0.width``."""
    key, index, field = path.split(".")

    def edit(data, root):
        data[key][int(index)][field] = value

    return edit


def _latin1(data, root):
    data["categories"][0]["name"] = "personne agée"
    return json.dumps(data, ensure_ascii=False).encode("latin-1")


def _binary(data, root):
    return pickle.dumps(data)


def _zero_byte(data, root):
    (root / "train2017" / "empty.jpg").write_bytes(b"")
    data["images"][0]["file_name"] = "train2017/empty.jpg"


def _text_as_jpg(data, root):
    (root / "train2017" / "notes.jpg").write_text("these are my notes, not a photo\n")
    data["images"][0]["file_name"] = "train2017/notes.jpg"


def _truncated_jpg(data, root):
    src = root / data["images"][1]["file_name"]
    (root / "train2017" / "cut.jpg").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    data["images"][0]["file_name"] = "train2017/cut.jpg"


def _truncated_png(data, root):
    path = root / "train2017" / "cut.png"
    Image.new("RGB", (640, 480), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    data["images"][0]["file_name"] = "train2017/cut.png"


def _header_only(data, root):
    src = root / data["images"][1]["file_name"]
    (root / "train2017" / "head.jpg").write_bytes(src.read_bytes()[:40])
    data["images"][0]["file_name"] = "train2017/head.jpg"


def _directory_as_image(data, root):
    (root / "train2017" / "folder.jpg").mkdir()
    data["images"][0]["file_name"] = "train2017/folder.jpg"


def _resized(data, root):
    for im in data["images"][:2]:
        im["width"], im["height"] = im["width"] * 2, im["height"] * 2


def _absolute_outside(data, root):
    data["images"][0]["file_name"] = "/etc/passwd"


def _absolute_escape(data, root):
    data["images"][0]["file_name"] = f"{root}/../../etc/passwd"


def _no_images(data, root):
    data["images"], data["annotations"] = [], []


def _dup_image_id(data, root):
    data["images"][1]["id"] = data["images"][0]["id"]


def _unknown_image(data, root):
    data["annotations"][0]["image_id"] = 424242


COCO_CASES = [
    # (finding 6) encodings and JSON
    ("latin1-json", _latin1, "ann.json: not UTF-8 text"),
    ("binary-json", _binary, "ann.json: not UTF-8 text"),
    ("truncated-json", lambda d, r: json.dumps(d).encode()[:-20], "ann.json: invalid JSON"),
    ("json-list", lambda d, r: b"[1, 2, 3]", "'images' must be a list"),
    ("images-not-list", lambda d, r: d.update(images={"a": 1}), "'images' must be a list"),
    # (finding 6) integers beyond int32, sequence fields
    ("width-2^31", _set("images.0.width", BIG), "width must be in [1, 2147483647]"),
    ("height-2^40", _set("images.0.height", 2**40), "height must be in [1, 2147483647]"),
    ("category-id-2^31", _set("categories.0.id", BIG), "categories[0] 'id' must be in"),
    ("ann-category-id-2^31", _set("annotations.0.category_id", BIG), "category_id must be in"),
    ("frame-index-2^31", _set("images.0.frame_index", BIG), "frame_index must be in"),
    ("frame-index-string", _set("images.0.frame_index", "3"), "frame_index must be an integer, got '3'"),
    ("frame-index-fraction", _set("images.0.frame_index", 1.5), "frame_index must be an integer, got 1.5"),
    ("sequence-id-int", _set("images.0.sequence_id", 7), "sequence_id must be a string, got 7"),
    ("sequence-id-list", _set("images.0.sequence_id", ["a"]), "sequence_id must be a string"),
    # (finding 8) leniency that hid errors
    ("negative-w", lambda d, r: d["annotations"][0].update(bbox=[10, 10, -5, 5]), "negative width or height"),
    ("negative-h", lambda d, r: d["annotations"][0].update(bbox=[10, 10, 5, -5]), "negative width or height"),
    ("iscrowd-no", _set("annotations.0.iscrowd", "no"), "iscrowd must be 0, 1, true or false, got 'no'"),
    ("iscrowd-2", _set("annotations.0.iscrowd", 2), "iscrowd must be 0, 1, true or false, got 2"),
    ("bbox-bool", _set("annotations.0.bbox", [True, 1, 2, 3]), "bbox must be [x, y, w, h]"),
    ("bbox-strings", _set("annotations.0.bbox", ["1", "2", "3", "4"]), "bbox must be [x, y, w, h]"),
    ("bbox-null", _set("annotations.0.bbox", [1, None, 3, 4]), "bbox must be [x, y, w, h]"),
    ("bbox-nan", _set("annotations.0.bbox", [1, float("nan"), 3, 4]), "non-finite"),
    ("width-fraction", _set("images.0.width", 640.5), "width must be an integer, got 640.5"),
    ("width-string", _set("images.0.width", "640"), "width must be an integer, got '640'"),
    ("width-bool", _set("images.0.width", True), "width must be an integer, got True"),
    ("width-zero", _set("images.0.width", 0), "width and height must be > 0, got 0x"),
    ("height-missing", lambda d, r: d["images"][0].pop("height"), "height must be an integer, got None"),
    ("zero-images", _no_images, "no images"),
    # malformed entries
    ("image-id-list", _set("images.0.id", [1]), "'id' must be an integer or a string, got [1]"),
    ("image-entry-string", lambda d, r: d["images"].__setitem__(0, "x.jpg"), "images[0] must be an object"),
    ("duplicate-image-id", _dup_image_id, "duplicate image id"),
    ("category-without-id", lambda d, r: d["categories"][0].pop("id"), "categories[0] 'id' must be an integer, got None"),
    ("category-without-name", lambda d, r: d["categories"][1].pop("name"), "categories[1] (id 2): 'name'"),
    ("annotation-string", lambda d, r: d["annotations"].__setitem__(0, "box"), "annotations[0] must be an object"),
    ("ann-image-id-list", _set("annotations.0.image_id", [9]), "image_id [9]: image_id is not the id"),
    ("ann-unknown-image", _unknown_image, "of image_id 424242: image_id is not the id of an image"),
    ("ann-category-string", _set("annotations.0.category_id", "car"), "category_id must be an integer, got 'car'"),
    # (finding 5) paths outside the root
    ("dotdot-escape", _set("images.0.file_name", "../../../../etc/passwd"), "'../../../../etc/passwd' is outside the images root"),
    ("absolute-outside", _absolute_outside, "'/etc/passwd' is outside the images root"),
    ("absolute-escape", _absolute_escape, "/../../etc/passwd' is outside the images root"),
    ("url-file-name", _set("images.0.file_name", "http://example.com/a.jpg"), "is outside the images root"),
    ("file-name-null", _set("images.0.file_name", None), "file_name must be a non-empty string, got None"),
    # (finding 5) files that are not usable images
    ("zero-byte-image", _zero_byte, "'train2017/empty.jpg' (empty file (0 bytes))"),
    ("text-as-jpg", _text_as_jpg, "'train2017/notes.jpg' (not an image"),
    ("truncated-jpg", _truncated_jpg, "'train2017/cut.jpg' (truncated JPEG"),
    ("truncated-png", _truncated_png, "'train2017/cut.png' (truncated PNG"),
    ("header-only-jpg", _header_only, "'train2017/head.jpg' ("),
    ("directory-as-image", _directory_as_image, "not found under"),
    # (finding 4) sizes that disagree with the files
    ("resized-after-labelling", _resized, "2 of 4 image(s) in"),
    ("width-height-swapped", lambda d, r: d["images"][0].update(width=d["images"][0]["height"], height=d["images"][0]["width"]),
     "1 of them have width and height swapped (EXIF orientation?"),
]


@pytest.mark.parametrize("edit, culprit", [c[1:] for c in COCO_CASES], ids=[c[0] for c in COCO_CASES])
def test_bad_coco_import(coco_case, edit, culprit):
    argv, watched = coco_case(edit)
    assert_bad_input(argv, culprit, *watched)


def test_resized_names_the_files_and_both_sizes(coco_case, coco_json):
    argv, watched = coco_case(_resized)
    im = coco_json["images"][0]
    line = assert_bad_input(argv, f"{im['file_name']!r} (JSON {im['width'] * 2}x{im['height'] * 2}, file {im['width']}x{im['height']})",
                            *watched)
    assert "--rescale-boxes" in line


def test_bad_images_on_s3_are_named(s3_bucket, coco_json, user_images, tmp_path):
    from activedet import store

    for im in coco_json["images"][1:]:
        store.upload(user_images / im["file_name"], f"{s3_bucket}/imgs/{im['file_name']}")
    store.write_bytes(f"{s3_bucket}/imgs/{coco_json['images'][0]['file_name']}", b"")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco_json))
    assert_bad_input(["data", "import-coco", ann, "--images", f"{s3_bucket}/imgs", "--out", tmp_path / "out"],
                     "(empty file (0 bytes))", ann, tmp_path / "out")


# --------------------------------------------------------------------------- YOLO


@pytest.fixture
def yolo_tree(user_images, tmp_path) -> Path:
    """A two-image YOLO dataset (real photos) with one label file each."""
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for name, src in zip(("a", "b"), sorted((user_images / "train2017").iterdir())[:2], strict=True):
        shutil.copy(src, root / "images" / "train" / f"{name}.jpg")
        (root / "labels" / "train" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.3 0.3 0.1 0.1\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [car, person]\n")
    return root


def _label(text: str | bytes):
    def edit(root: Path):
        path = root / "labels" / "train" / "a.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return edit


def _image(data: bytes | None, name: str = "a.jpg"):
    def edit(root: Path):
        src = root / "images" / "train" / "b.jpg"
        (root / "images" / "train" / name).write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2] if data is None else data)

    return edit


def _yolo_list_latin1(root: Path):
    (root / "train.txt").write_bytes("images/train/a.jpg\nimages/train/é.jpg\n".encode("latin-1"))
    (root / "data.yaml").write_text("path: .\ntrain: train.txt\nnames: [car, person]\n")


def _yolo_empty(root: Path):
    shutil.rmtree(root / "images" / "train")
    (root / "images" / "train").mkdir()


YOLO_CASES = [
    ("label-latin1", _label("0 0.5 0.5 0.2 0.4 # vélo\n".encode("latin-1")), "a.txt: not UTF-8 text"),
    ("label-binary", _label(pickle.dumps({"boxes": [1, 2]})), "a.txt: not UTF-8 text"),
    ("label-pixels", _label("0 320 240 64 48\n"), "a.txt:1: coordinates must be normalised"),
    ("label-negative-w", _label("0 0.5 0.5 -0.2 0.4\n"), "a.txt:1: negative box width or height"),
    ("label-nan", _label("0 nan 0.5 0.2 0.4\n"), "a.txt:1: non-finite coordinate"),
    ("label-class-float", _label("1.0 0.5 0.5 0.2 0.4\n"), "a.txt:1: expected 'class cx cy w h'"),
    ("label-class-negative", _label("-1 0.5 0.5 0.2 0.4\n"), "a.txt:1: class index -1 not in names"),
    ("label-five-values", _label("0 0.5 0.5 0.2 0.4 0.1\n"), "a.txt:1: expected 4 box values or a polygon"),
    ("label-second-line", _label("0 0.5 0.5 0.2 0.4\n0 0.5\n"), "a.txt:2:"),
    ("yaml-latin1", lambda r: (r / "data.yaml").write_bytes("path: .\ntrain: images/train\nnames: [vélo]\n".encode("latin-1")),
     "data.yaml: not UTF-8 text"),
    ("list-latin1", _yolo_list_latin1, "train.txt: not UTF-8 text"),
    ("zero-images", _yolo_empty, "data.yaml: no images"),
    ("zero-byte-image", _image(b""), "a.jpg' (empty file (0 bytes))"),
    ("text-as-jpg", _image(b"hello, not an image\n"), "a.jpg' (not an image"),
    ("truncated-jpg", _image(None), "a.jpg' (truncated JPEG"),
]


@pytest.mark.parametrize("edit, culprit", [c[1:] for c in YOLO_CASES], ids=[c[0] for c in YOLO_CASES])
def test_bad_yolo_import(yolo_tree, tmp_path, edit, culprit):
    edit(yolo_tree)
    out = tmp_path / "out"
    assert_bad_input(["data", "import-yolo", yolo_tree / "data.yaml", "--out", out], culprit, yolo_tree, out)


# --------------------------------------------------------------------------- labels import


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A dataset, a ledger, a 3-image selection and the annotator's (good) COCO reply."""
    from activedet.data.synth import generate_synthdrive
    from activedet.labels import export_batch
    from activedet.stages import init, select_batch

    root = tmp_path_factory.mktemp("labels-batch")
    ds = str(root / "ds")
    generate_synthdrive(ds, sequences=6, frames=3, seed=0, height=64, width=128)
    ledger = init.run(init.Config(dataset_uri=ds, output_uri=str(root / "l0"), initial_size=3)).ledger_uri
    sel = select_batch.run(select_batch.Config(dataset_uri=ds, ledger_uri=ledger, output_uri=str(root / "s1"),
                                               strategy="random", budget=3))
    coco = json.loads(Path(export_batch(ds, sel.selection_uri, str(root / "export")).coco_uri).read_text())
    coco["annotations"] = [{"id": k + 1, "image_id": im["id"], "category_id": coco["categories"][0]["id"],
                            "bbox": [2, 3, 10, 8], "iscrowd": 0} for k, im in enumerate(coco["images"])]
    assert len(coco["images"]) == 3
    return {"ds": ds, "selection": sel.selection_uri, "ledger": sel.ledger_uri, "coco": coco}


def _ann0(field: str, value):
    def edit(c):
        c["annotations"][0][field] = value

    return edit


LABEL_CASES = [
    ("bbox-strings", _ann0("bbox", ["2", "3", "10", "8"]), "annotation 1: bbox must be [x, y, w, h]"),
    ("bbox-null-coordinate", _ann0("bbox", [2, None, 10, 8]), "annotation 1: bbox must be [x, y, w, h]"),
    ("bbox-bool", _ann0("bbox", [2, 3, True, 8]), "annotation 1: bbox must be [x, y, w, h]"),
    ("bbox-missing", lambda c: c["annotations"][0].pop("bbox"), "annotation 1: bbox must be [x, y, w, h] (four numbers), got None"),
    ("bbox-negative-h", _ann0("bbox", [2, 3, 10, -8]), "annotation 1: bbox has a negative width or height"),
    ("iscrowd-no", _ann0("iscrowd", "no"), "annotation 1: iscrowd must be 0, 1, true or false"),
    ("annotation-string", lambda c: c["annotations"].__setitem__(0, "a box"), "annotations[0] must be an object"),
    ("ann-image-id-list", _ann0("image_id", [1]), "annotation 1: image_id must be an integer or a string, got [1]"),
    ("ann-category-dict", _ann0("category_id", {"id": 1}), "annotation 1: category_id must be an integer or a string"),
    ("image-id-list", lambda c: c["images"][0].update(id=[1]), "images[0] 'id' must be an integer or a string, got [1]"),
    ("image-without-id", lambda c: c["images"][0].pop("id"), "images[0] has no 'id'"),
    ("image-entry-number", lambda c: c["images"].__setitem__(0, 5), "images[0] must be an object"),
    ("activedet-image-id-list", lambda c: c["images"][0].update(activedet_image_id=["x"]), "'activedet_image_id' must be a string"),
    ("file-name-number", lambda c: (c["images"][0].pop("activedet_image_id"), c["images"][0].update(file_name=3)),
     "'file_name' must be a string, got 3"),
    ("category-without-id", lambda c: c["categories"][0].pop("id"), "categories[0] ('car') has no 'id'"),
    ("category-id-list", lambda c: c["categories"][0].update(id=[1]), "categories[0] 'id' must be an integer or a string"),
    ("category-string", lambda c: c["categories"].__setitem__(0, "car"), "categories[0] must be an object"),
    ("category-name-number", lambda c: c["categories"][0].update(name=5), "'name' must be a string, got 5"),
]


@pytest.mark.parametrize("edit, culprit", [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_bad_labels_import(batch, tmp_path, edit, culprit):
    coco = json.loads(json.dumps(batch["coco"]))
    edit(coco)
    path = tmp_path / "returned.json"
    path.write_text(json.dumps(coco))
    _labels_import(batch, path, tmp_path, culprit)


@pytest.mark.parametrize("encode, culprit", [
    (lambda c: json.dumps(c, ensure_ascii=False).replace('"car"', '"voiture électrique"').encode("latin-1"), "not UTF-8 text"),
    (lambda c: pickle.dumps(c), "not UTF-8 text"),
    (lambda c: json.dumps(c).encode()[:-5], "invalid JSON at line 1"),
], ids=["latin1", "binary", "truncated"])
def test_bad_labels_file(batch, tmp_path, encode, culprit):
    path = tmp_path / "returned.json"
    path.write_bytes(encode(batch["coco"]))
    _labels_import(batch, path, tmp_path, culprit)


def _labels_import(batch, path: Path, tmp_path: Path, culprit: str) -> None:
    out = tmp_path / "imported"
    argv = ["labels", "import", path, "--dataset-uri", batch["ds"], "--selection-uri", batch["selection"],
            "--ledger-uri", batch["ledger"], "--output-uri", out]
    assert_bad_input(argv, culprit, path, out, batch["ds"], batch["ledger"])
    assert str(path) in run_cli(argv)[2]  # the line names the file


def test_the_unedited_reply_imports(batch, tmp_path):
    """The cases above fail because of their one edit: the reply they start from is good."""
    path = tmp_path / "returned.json"
    path.write_text(json.dumps(batch["coco"]))
    code, _, err = run_cli(["labels", "import", path, "--dataset-uri", batch["ds"], "--selection-uri", batch["selection"],
                            "--ledger-uri", batch["ledger"], "--output-uri", tmp_path / "imported"])
    assert code == 0, err


def test_the_unedited_yolo_tree_imports(yolo_tree, tmp_path):
    code, _, err = run_cli(["data", "import-yolo", yolo_tree / "data.yaml", "--out", tmp_path / "out"])
    assert code == 0, err
