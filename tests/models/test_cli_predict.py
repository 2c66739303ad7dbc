from activedet import schema, store
from activedet.cli.main import main
from activedet.models.checkpoint import build_detector, write_checkpoint


def test_predict_command_writes_a_boxes_table(synth, synth_dataset, untrained_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "preds")
    rc = main(["predict", "--checkpoint", untrained_checkpoint, "--dataset", synth_dataset, "--split", "val",
               "--out", out, "--flip-tta", "--score-floor", "0.1", "--device", "cpu"])
    assert rc == 0
    assert store.is_committed(out)
    table = store.read_table(store.join(out, "predictions.parquet"))
    schema.validate_boxes(table, images=synth.images, categories=synth.categories)
    assert set(table.column("image_id").to_pylist()) <= set(synth.split_ids("val"))
    assert store.exists(store.join(out, "predictions_flipped.parquet"))
    assert f'"images": {len(synth.split_ids("val"))}' in capsys.readouterr().out


def test_predict_refuses_mismatched_classes(synth_dataset, tmp_path, capsys):
    uri = str(tmp_path / "other")
    with store.OutputWriter(uri) as out:
        write_checkpoint(out, build_detector("tiny", category_ids=[1], class_names=["bus"]))
    rc = main(["predict", "--checkpoint", uri, "--dataset", synth_dataset, "--out", str(tmp_path / "p")])
    assert rc == 2
    assert "trained on classes" in capsys.readouterr().err


def test_stage_commands_are_registered(capsys):
    import pytest

    for name in ("train-teacher", "evaluate"):
        with pytest.raises(SystemExit):
            main(["stage", name, "--help"])
    assert "--init-checkpoint-uri" in capsys.readouterr().out
