"""Production labeling in the main pipeline: the export step writes the selected batch for annotators."""

from __future__ import annotations

import json

from activedet import store
from activedet.pipeline import steps
from activedet.pipeline.layout import RunLayout
from activedet.pipeline.plan import load_experiment
from activedet.stages import init, select_batch


def test_export_step_writes_the_selection_as_coco_and_manifest(synth_dataset, tmp_path):
    exp = load_experiment(
        {"dataset": {"uri": synth_dataset}, "initial_size": 4, "budget": 3, "cycles": 1, "labeling": "export"}
    )
    run_root = str(tmp_path / "run")
    lay = RunLayout(run_root, exp)
    init.run(init.Config(dataset_uri=synth_dataset, output_uri=lay.ledger(0), initial_size=4))
    select_batch.run(
        select_batch.Config(
            dataset_uri=synth_dataset, ledger_uri=lay.ledger(0), output_uri=lay.selection(0), strategy="random", budget=3
        )
    )
    result = json.loads(steps.export_batch(exp.to_json(), run_root, 0))
    assert result["images"] == 3
    coco = store.read_output_json(lay.export(0), "batch.coco.json")
    selected = set(select_batch.read_selection(lay.selection(0)).column("image_id").to_pylist())
    assert {im["activedet_image_id"] for im in coco["images"]} == selected
    assert coco["annotations"] == []
