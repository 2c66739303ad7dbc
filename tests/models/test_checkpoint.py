import json
import pickle

import numpy as np
import pytest
import torch

from activedet import store
from activedet.errors import ActivedetError
from activedet.models.checkpoint import (
    CheckpointError,
    build_detector,
    detector_for_dataset,
    load_detector,
    load_weights,
    write_checkpoint,
)
from activedet.models.predict import Predictor


def _boxes_of(det, synth, ids):
    preds = list(Predictor(det, device="cpu", score_floor=0.0).predict(synth, ids))
    return [(p.detections.boxes, p.detections.class_probs) for p in preds]


def test_round_trip_gives_identical_predictions(synth, untrained_checkpoint):
    meta = json.loads((store.local_path(untrained_checkpoint) / "meta.json").read_text())
    assert meta["preset"] == "tiny" and meta["class_names"] == synth.class_names
    assert meta["category_ids"] == synth.category_ids and meta["package_version"]
    assert meta["input_size"] == {"min_size": [128], "max_size": 256}
    a = load_detector(untrained_checkpoint, dataset=synth)
    b = load_detector(untrained_checkpoint, dataset=synth)
    assert a.meta["metrics"] == {"note": "untrained"}
    ids = synth.split_ids("val")[:2]
    for (ba, pa_), (bb, pb) in zip(_boxes_of(a, synth, ids), _boxes_of(b, synth, ids), strict=False):
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(pa_, pb)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k])


def test_loading_never_unpickles(monkeypatch, synth, untrained_checkpoint):
    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    det = load_detector(untrained_checkpoint, dataset=synth)
    assert det.preset == "tiny"
    files = sorted(p.name for p in store.local_path(untrained_checkpoint).iterdir())
    assert files == ["_MANIFEST.json", "meta.json", "model.safetensors"]


def test_class_mismatch_is_refused(synth, untrained_checkpoint, tmp_path):
    other = build_detector("tiny", category_ids=[1, 2], class_names=["car", "bus"])
    uri = str(tmp_path / "other")
    with store.OutputWriter(uri) as out:
        write_checkpoint(out, other)
    with pytest.raises(CheckpointError, match="trained on classes .*bus.* but dataset"):
        load_detector(uri, dataset=synth)
    with pytest.raises(CheckpointError, match="classes"):
        load_weights(detector_for_dataset("tiny", synth), uri)
    assert issubclass(CheckpointError, ActivedetError)


def test_missing_or_corrupt_checkpoint(tmp_path, untrained_checkpoint):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_detector(str(tmp_path / "nothing"))
    meta = (store.local_path(untrained_checkpoint) / "meta.json").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_bytes(meta)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="has no _MANIFEST.json"):  # uncommitted: never loaded
        load_detector(str(bad))
    with store.OutputWriter(str(tmp_path / "corrupt")) as out:  # committed, but not safetensors
        out.write_bytes("meta.json", meta)
        out.write_bytes("model.safetensors", b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_detector(str(tmp_path / "corrupt"))


def test_swapped_weights_fail_the_manifest_hash(tmp_path, untrained_checkpoint, synth):
    other = tmp_path / "other"
    torch.manual_seed(7)
    with store.OutputWriter(str(other)) as out:
        write_checkpoint(out, detector_for_dataset("tiny", synth))
    target = store.local_path(untrained_checkpoint) / "model.safetensors"
    swapped = tmp_path / "swapped"
    import shutil

    shutil.copytree(store.local_path(untrained_checkpoint), swapped)
    shutil.copyfile(other / "model.safetensors", swapped / "model.safetensors")  # same size, other tensors
    assert (swapped / "model.safetensors").stat().st_size == target.stat().st_size
    with pytest.raises(CheckpointError, match="sha256"):
        load_detector(str(swapped))


def test_s3_round_trip(s3_bucket, synth):
    torch.manual_seed(1)
    det = detector_for_dataset("tiny", synth)
    uri = f"{s3_bucket}/ckpt/teacher"
    with store.OutputWriter(uri) as out:
        write_checkpoint(out, det)
    back = load_detector(uri, dataset=synth)
    for k, v in det.model.state_dict().items():
        torch.testing.assert_close(v, back.model.state_dict()[k])
