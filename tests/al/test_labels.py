from __future__ import annotations

import json

import pytest

from activedet import store
from activedet.al import ledger as L
from activedet.cli.main import main
from activedet.labels import (
    COCO_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    LabelImportError,
    export_batch,
    import_labels,
)
from activedet.stages import init, select_batch


@pytest.fixture
def batch(al_dataset, tmp_path):
    l0 = init.run(init.Config(dataset_uri=al_dataset, output_uri=str(tmp_path / "l0"), initial_size=4)).ledger_uri
    res = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=l0, output_uri=str(tmp_path / "s1"),
                                               strategy="random", budget=3))
    exp = export_batch(al_dataset, res.selection_uri, str(tmp_path / "export"))
    coco = json.loads(store.read_bytes(exp.coco_uri))
    return al_dataset, res, exp, coco


def annotate(coco: dict) -> dict:
    """What an annotator returns: tools renumber categories and drop our extra image field."""
    out = json.loads(json.dumps(coco))
    cats = [{"id": 10 + c["id"], "name": c["name"]} for c in coco["categories"]]
    out["categories"] = cats
    for im in out["images"]:
        im.pop("activedet_image_id")
    out["annotations"] = [
        {"id": k + 1, "image_id": im["id"], "category_id": cats[k % len(cats)]["id"], "bbox": [1, 2, 10, 8], "iscrowd": 0}
        for k, im in enumerate(out["images"])
    ] + [{"id": 99, "image_id": out["images"][0]["id"], "category_id": cats[0]["id"], "bbox": [20, 5, 4, 4]}]
    return out


def write(tmp_path, name, coco) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(coco))
    return str(path)


def do_import(ds, res, coco_path, out, **kw):
    return import_labels(coco_path, selection_uri=res.selection_uri, dataset_uri=ds, ledger_uri=kw.pop("ledger_uri", res.ledger_uri),
                         output_uri=out, **kw)


def test_export_writes_coco_and_manifest(batch):
    ds, res, exp, coco = batch
    sel = select_batch.read_selection(res.selection_uri).column("image_id").to_pylist()
    assert [im["activedet_image_id"] for im in coco["images"]] == sel
    assert [c["name"] for c in coco["categories"]] == ["car", "person", "truck"] and coco["annotations"] == []
    lines = [json.loads(x) for x in store.read_text(exp.manifest_uri).splitlines()]
    assert [m["image_id"] for m in lines] == sel and lines[0]["source-ref"].startswith(ds)
    assert exp.manifest_uri.endswith(MANIFEST_FILE) and exp.coco_uri.endswith(COCO_FILE)


def test_import_round_trip_and_twice_without_duplicates(batch, tmp_path):
    ds, res, exp, coco = batch
    path = write(tmp_path, "returned.json", annotate(coco))
    first = do_import(ds, res, path, str(tmp_path / "imp1"))
    assert first.images == 3 and first.boxes == 4
    boxes = store.read_output_table(first.output_uri, LABELS_FILE)
    assert set(boxes.column("source").to_pylist()) == {"gt"}
    first_box = boxes.filter(boxes.column("x2").to_numpy() == 11.0).to_pylist()[0]
    assert (first_box["x1"], first_box["y1"], first_box["y2"]) == (1.0, 2.0, 10.0)  # xywh -> xyxy
    assert set(boxes.column("category_id").to_pylist()) <= {1, 2, 3}  # renumbered ids mapped back by name
    led, _ = L.read_ledger(first.ledger_uri)
    assert L.counts(led)["pending"] == 0 and L.counts(led)["labeled"] == 7
    again = do_import(ds, res, path, str(tmp_path / "imp2"), ledger_uri=first.ledger_uri, previous_labels_uri=first.output_uri)
    assert again.boxes == 4 and again.replaced_images == 3
    assert store.read_output_table(again.output_uri, LABELS_FILE).num_rows == 4


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c["images"].append({"id": 500, "file_name": "images/s3_f00.png", "width": 64, "height": 32}), "not in the selection"),
        (lambda c: c["images"].pop(), "missing"),
        (lambda c: c["categories"].append({"id": 77, "name": "tram"}), "unknown category 'tram'"),
        (lambda c: c["annotations"].append({"id": 7, "image_id": c["images"][0]["id"], "category_id": 5, "bbox": [1, 1, 2, 2]}), "unknown category 5"),
        (lambda c: c["annotations"].append({"id": 8, "image_id": 12345, "category_id": c["categories"][0]["id"], "bbox": [1, 1, 2, 2]}), "unknown image"),
        (lambda c: c["annotations"].append({"id": 9, "image_id": c["images"][0]["id"], "category_id": c["categories"][0]["id"], "bbox": [1, 1, -2, 2]}), "negative width or height"),
        (lambda c: c["annotations"].append({"id": 10, "image_id": c["images"][0]["id"], "category_id": c["categories"][0]["id"], "bbox": [1, 1, 0, 2]}), "x2 <= x1"),
    ],
)
def test_bad_imports_fail_clearly(batch, tmp_path, breakage, message):
    ds, res, exp, coco = batch
    bad = annotate(coco)
    if message == "missing":
        bad["annotations"] = [a for a in bad["annotations"] if a["image_id"] != bad["images"][-1]["id"]]
    breakage(bad)
    with pytest.raises(LabelImportError, match=message):
        do_import(ds, res, write(tmp_path, "bad.json", bad), str(tmp_path / "imp"))
    assert not store.is_committed(str(tmp_path / "imp"))


def test_partial_import_leaves_rest_pending(batch, tmp_path):
    ds, res, exp, coco = batch
    part = annotate(coco)
    dropped = part["images"].pop()["id"]
    part["annotations"] = [a for a in part["annotations"] if a["image_id"] != dropped]
    out = do_import(ds, res, write(tmp_path, "part.json", part), str(tmp_path / "imp"), allow_partial=True)
    assert out.images == 2 and L.counts(L.read_ledger(out.ledger_uri)[0])["pending"] == 1


def test_labels_cli(batch, tmp_path, capsys):
    ds, res, exp, coco = batch
    assert main(["labels", "export", "--dataset-uri", ds, "--selection-uri", res.selection_uri, "--output-uri", str(tmp_path / "e2")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    args = ["--dataset-uri", ds, "--selection-uri", res.selection_uri, "--ledger-uri", res.ledger_uri]
    good = write(tmp_path, "good.json", annotate(coco))
    assert main(["labels", "import", good, *args, "--output-uri", str(tmp_path / "i1")]) == 0
    bad = write(tmp_path, "bad.json", {"nothing": 1})
    assert main(["labels", "import", bad, *args, "--output-uri", str(tmp_path / "i2")]) == 2
    assert "not COCO JSON" in capsys.readouterr().err
    assert main(["labels", "import", str(tmp_path / "nope.json"), *args, "--output-uri", str(tmp_path / "i3")]) == 2
