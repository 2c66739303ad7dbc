"""score-unlabeled with the real (untrained, tiny) detector: wiring, shards, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from activedet import store
from activedet.cli.main import main
from activedet.stages import init, merge_scores, score_unlabeled, select_batch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synth_dataset):
    import torch

    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, write_checkpoint

    torch.manual_seed(0)
    det = detector_for_dataset("tiny", load_dataset(synth_dataset))
    uri = str(tmp_path_factory.mktemp("al-ckpt") / "model")
    with store.OutputWriter(uri) as out:
        write_checkpoint(out, det)
    return uri


def test_detector_scores_shard_and_merge_via_cli(synth_dataset, checkpoint, tmp_path, capsys):
    ledger = init.run(init.Config(dataset_uri=synth_dataset, output_uri=str(tmp_path / "l0"), initial_size=30)).ledger_uri
    common = ["--checkpoint-uri", checkpoint, "--dataset-uri", synth_dataset, "--ledger-uri", ledger,
              "--scores", "[unified, mc_dropout, embedding]", "--mc-samples", "2", "--batch-size", "4",
              "--include-labeled", "--device", "cpu", "--score-floor", "0.0"]
    uris = {}
    for shard in ("0/1", "0/2", "1/2"):
        uris[shard] = str(tmp_path / shard.replace("/", "of"))
        assert main(["stage", "score-unlabeled", *common, "--shard", shard, "--output-uri", uris[shard]]) == 0
        capsys.readouterr()
    merged = merge_scores.run(merge_scores.Config(shard_uris=[uris["1/2"], uris["0/2"]], output_uri=str(tmp_path / "m")))
    one = store.read_output_table(uris["0/1"], score_unlabeled.SCORES_FILE)
    two = store.read_output_table(merged.scores_uri, score_unlabeled.SCORES_FILE)
    assert one.column("image_id").to_pylist() == two.column("image_id").to_pylist()
    for col in ("entropy", "inconsistency", "mc_dropout"):
        a, b = (t.column(col).to_numpy() for t in (one, two))
        assert np.isfinite(a).all() and (a >= 0).all()
        np.testing.assert_array_equal(a, b)  # same batches, same dropout masks
    emb = np.stack(one.column("embedding").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-4)
    # the whole train split is scored (include_labeled), so core-set can run on it
    res = select_batch.run(select_batch.Config(dataset_uri=synth_dataset, ledger_uri=ledger, output_uri=str(tmp_path / "s"),
                                               strategy="coreset", budget=3, scores_uri=merged.scores_uri, device="cpu"))
    assert res.selected == 3
    assert main(["stage", "score-unlabeled", *common, "--output-uri", str(tmp_path / "x"), "--scores", "[nope]"]) == 2
    assert "unknown score" in capsys.readouterr().err
    meta = json.loads(store.read_text(store.join(merged.scores_uri, score_unlabeled.SCORES_META)))
    assert meta["merged_from"] == 2 and meta["rows"] == one.num_rows
