"""The import-labels stage: returned COCO labels join the dataset once, however often imported."""

from __future__ import annotations

from ops_helpers import drop_images, make_base

from activedet import labels, store
from activedet.al.ledger import counts, read_ledger
from activedet.data.dataset import load_dataset
from activedet.stages import import_labels, ingest, select_batch


def _returned_coco(export_uri: str) -> dict:
    coco = store.read_json(store.join(export_uri, labels.COCO_FILE))
    coco["annotations"] = [
        {"id": k + 1, "image_id": img["id"], "category_id": 1, "bbox": [2.0, 3.0, 10.0, 8.0], "iscrowd": 0}
        for k, img in enumerate(coco["images"])
    ]
    return coco


def test_labels_imported_twice_are_not_duplicated(tmp_path):
    root = str(tmp_path)
    ds0, led0 = make_base(root)
    drop_images(store.join(root, "incoming"), ["d1/frame_1.png", "d1/frame_2.png", "d1/frame_3.png"])
    ing = ingest.run(ingest.Config(source_uri=store.join(root, "incoming"), dataset_uri=ds0, ledger_uri=led0,
                                   out_dataset_uri=store.join(root, "ds1"), out_ledger_uri=store.join(root, "led1")))
    sel = select_batch.run(select_batch.Config(dataset_uri=ing["dataset_uri"], ledger_uri=ing["ledger_uri"],
                                               output_uri=store.join(root, "sel"), strategy="random", budget=2))
    export = labels.export_batch(ing["dataset_uri"], sel.selection_uri, store.join(root, "exports/cycle-0001"))
    returned = store.join(root, "returns/cycle-0001.json")
    store.write_json(returned, _returned_coco(export.output_uri))
    ret = import_labels.LabelReturn(coco_uri=returned, selection_uri=sel.selection_uri)

    r1 = import_labels.run(import_labels.Config(
        dataset_uri=ing["dataset_uri"], ledger_uri=sel.ledger_uri, returns=[ret], output_uri=store.join(root, "imp1"),
        out_dataset_uri=store.join(root, "ds2"), out_ledger_uri=store.join(root, "led2")))
    ds2 = load_dataset(r1["dataset_uri"])
    assert ds2.boxes.num_rows == 1 + 2  # base gt box + one per labeled image
    ledger, _ = read_ledger(r1["ledger_uri"])
    assert counts(ledger) == {"labeled": 3, "unlabeled": 1, "pending": 0}

    # the same file again (e.g. the next run re-imports it): same boxes, same ledger
    r2 = import_labels.run(import_labels.Config(
        dataset_uri=r1["dataset_uri"], ledger_uri=r1["ledger_uri"], returns=[ret], labels_uri=r1["labels_uri"],
        output_uri=store.join(root, "imp2"), out_dataset_uri=store.join(root, "ds3"), out_ledger_uri=store.join(root, "led3")))
    ds3 = load_dataset(r2["dataset_uri"])
    assert ds3.boxes.num_rows == 3
    assert sorted(ds3.boxes.column("image_id").to_pylist()) == sorted(ds2.boxes.column("image_id").to_pylist())
    assert counts(read_ledger(r2["ledger_uri"])[0]) == {"labeled": 3, "unlabeled": 1, "pending": 0}


def test_no_returns_carries_state_over(tmp_path):
    root = str(tmp_path)
    ds0, led0 = make_base(root)
    r = import_labels.run(import_labels.Config(dataset_uri=ds0, ledger_uri=led0, output_uri=store.join(root, "imp"),
                                               out_dataset_uri=store.join(root, "ds"), out_ledger_uri=store.join(root, "led")))
    assert r["imports"] == [] and r["num_boxes"] == 1
    assert load_dataset(r["dataset_uri"]).images.num_rows == 2
    assert counts(read_ledger(r["ledger_uri"])[0])["labeled"] == 1
