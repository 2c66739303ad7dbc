from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from al_helpers import make_dataset, prediction

from activedet import store
from activedet.al import ledger as L
from activedet.cli.main import main
from activedet.config import load_config
from activedet.errors import ActivedetError, ConfigError
from activedet.models.types import Detections
from activedet.stages import init, merge_scores, oracle, score_unlabeled, select_batch


def run_init(ds, out, size=4, seed=0):
    return init.run(init.Config(dataset_uri=ds, output_uri=out, initial_size=size, seed=seed))


def fake_predictions(dataset, ids, needs, with_embedding):
    """Deterministic predictions per image id (a stand-in prediction *source*, not a mock of a library)."""
    for iid in ids:
        rng = np.random.default_rng(zlib.crc32(iid.encode()))
        probs = rng.dirichlet(np.ones(4), size=2).astype(np.float32)
        boxes = np.array([[2, 2, 20, 20], [30, 4, 50, 28]], np.float32)
        flipped = Detections(boxes + 1, probs[:, 1:].argmax(1) + 1, np.full(2, 0.9, np.float32), probs[::-1].copy())
        mc = rng.dirichlet(np.ones(4), size=(3, 2)).astype(np.float32)
        emb = rng.normal(size=8).astype(np.float32)
        yield prediction(iid, boxes, probs, scores=[0.9, 0.5], flipped=flipped if "flipped" in needs else None,
                         mc_probs=mc if "mc_probs" in needs else None, embedding=emb / np.linalg.norm(emb))


def test_init_same_set_for_a_seed_and_versioned(al_dataset, tmp_path):
    a = run_init(al_dataset, str(tmp_path / "l0a"), seed=1)
    b = run_init(al_dataset, str(tmp_path / "l0b"), seed=1)
    c = run_init(al_dataset, str(tmp_path / "l0c"), seed=2)
    la, meta = L.read_ledger(a.ledger_uri)
    lb, _ = L.read_ledger(b.ledger_uri)
    lc, _ = L.read_ledger(c.ledger_uri)
    assert la.equals(lb) and not la.equals(lc)
    assert a.labeled == 4 and la.num_rows == 18  # train split only
    assert meta["cycle"] == 0 and set(L.ids_in_state(la, "labeled")) <= {f"s{s}_f{f:02d}" for s in range(3) for f in range(6)}
    with pytest.raises(ActivedetError, match="exceeds"):
        run_init(al_dataset, str(tmp_path / "x"), size=100)


def test_cycle_select_then_oracle_keeps_old_ledgers(al_dataset, tmp_path):
    l0 = run_init(al_dataset, str(tmp_path / "l0")).ledger_uri
    before = store.read_bytes(store.join(l0, L.LEDGER_FILE))
    res = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=l0, output_uri=str(tmp_path / "s1"),
                                               strategy="random", budget=5, seed=3))
    assert res.cycle == 1 and res.selected == 5 and not res.exhausted
    assert store.read_bytes(store.join(l0, L.LEDGER_FILE)) == before  # previous version untouched
    sel = select_batch.read_selection(res.selection_uri)
    led1, meta1 = L.read_ledger(res.ledger_uri)
    pending = L.ids_in_state(led1, "pending")
    assert sorted(pending) == sorted(sel.column("image_id").to_pylist()) and meta1["parent"] == l0
    labeled0 = set(L.ids_in_state(L.read_ledger(l0)[0], "labeled"))
    assert not labeled0 & set(pending)
    # a second selection from the ledger with pending images never re-selects them
    res2 = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=res.ledger_uri,
                                                output_uri=str(tmp_path / "s2"), strategy="random", budget=5))
    sel2 = select_batch.read_selection(res2.selection_uri).column("image_id").to_pylist()
    assert not set(sel2) & (set(pending) | labeled0)
    orc = oracle.run(oracle.Config(ledger_uri=res.ledger_uri, output_uri=str(tmp_path / "o1"), selection_uri=res.selection_uri))
    led_o, _ = L.read_ledger(orc.ledger_uri)
    assert orc.revealed == 5 and orc.labeled == 9 and not L.ids_in_state(led_o, "pending")
    with pytest.raises(ActivedetError, match="not pending"):
        oracle.run(oracle.Config(ledger_uri=orc.ledger_uri, output_uri=str(tmp_path / "o2"), selection_uri=res.selection_uri))


def test_select_budget_over_pool_then_empty_pool(al_dataset, tmp_path):
    l0 = run_init(al_dataset, str(tmp_path / "l0"), size=4).ledger_uri
    res = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=l0, output_uri=str(tmp_path / "s1"),
                                               strategy="uniform", budget=100))
    assert res.selected == 14 and res.pool_size == 14
    res2 = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=res.ledger_uri,
                                                output_uri=str(tmp_path / "s2"), strategy="random", budget=3))
    assert res2.exhausted and res2.selected == 0 and res2.pool_size == 0
    assert select_batch.read_selection(res2.selection_uri).num_rows == 0


def score_config(ds, ledger, out, shard="0/1", **kw):
    return score_unlabeled.Config(checkpoint_uri="unused", dataset_uri=ds, ledger_uri=ledger, output_uri=out, shard=shard, **kw)


def test_shards_merge_to_the_one_shard_table(al_dataset, tmp_path):
    l0 = run_init(al_dataset, str(tmp_path / "l0")).ledger_uri
    names = ["unified", "mc_dropout", "embedding"]
    one = score_unlabeled.score_pool(score_config(al_dataset, l0, str(tmp_path / "one"), scores=names), fake_predictions)
    shard_uris = []
    for i in (2, 0, 3, 1):  # any order; 4 shards of 14 images (one shard may be small)
        uri = str(tmp_path / f"shard{i}")
        score_unlabeled.score_pool(score_config(al_dataset, l0, uri, shard=f"{i}/4", scores=names), fake_predictions)
        shard_uris.append(uri)
    merged = merge_scores.run(merge_scores.Config(shard_uris=shard_uris, output_uri=str(tmp_path / "merged")))
    a = store.read_output_table(one.scores_uri, score_unlabeled.SCORES_FILE)
    b = store.read_output_table(merged.scores_uri, score_unlabeled.SCORES_FILE)
    assert a.equals(b) and a.num_rows == 14
    assert a.column_names == ["image_id", "entropy", "inconsistency", "mc_dropout", "num_boxes", "pred_classes", "embedding"]
    assert a.schema.field("embedding").type.list_size == 8
    with pytest.raises(ActivedetError, match="shards 0..3"):
        merge_scores.run(merge_scores.Config(shard_uris=shard_uris[:3], output_uri=str(tmp_path / "bad")))


def test_more_shards_than_images_and_include_labeled(tmp_path):
    ds = make_dataset(str(tmp_path / "ds"), sequences=1, frames=3)
    l0 = run_init(ds, str(tmp_path / "l0"), size=1).ledger_uri
    uris = []
    for i in range(4):
        uris.append(str(tmp_path / f"s{i}"))
        score_unlabeled.score_pool(score_config(ds, l0, uris[-1], shard=f"{i}/4", include_labeled=True), fake_predictions)
    merged = merge_scores.run(merge_scores.Config(shard_uris=uris, output_uri=str(tmp_path / "m")))
    assert merged.rows == 3  # labeled image included for core-set centers


def test_scored_selection_strategies_end_to_end(al_dataset, tmp_path):
    l0 = run_init(al_dataset, str(tmp_path / "l0")).ledger_uri
    sc = score_unlabeled.score_pool(score_config(al_dataset, l0, str(tmp_path / "sc"), scores=["unified", "embedding"],
                                                 include_labeled=True), fake_predictions)
    labeled = set(L.ids_in_state(L.read_ledger(l0)[0], "labeled"))
    for strategy in ("topk", "coreset", "unified", "prefilter_coreset", "class_balanced", "uniform_topk", "auto"):
        res = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=l0, output_uri=str(tmp_path / strategy),
                                                   strategy=strategy, budget=4, scores_uri=sc.scores_uri, device="cpu"))
        ids = select_batch.read_selection(res.selection_uri).column("image_id").to_pylist()
        assert len(ids) == 4 and not set(ids) & labeled, strategy
        if strategy == "auto":  # the measurement and the choice reach the result and selection.json
            meta = store.read_json(store.join(res.selection_uri, select_batch.SELECTION_META))
            assert meta["auto.choice"] == res.info["auto.choice"] in ("unified", "random", "topk")
            assert 0.0 <= meta["auto.near_duplicate_share"] <= 1.0
    # with the cycle's evaluation given, a model under auto_min_ap50 selects what random selects
    with store.OutputWriter(str(tmp_path / "eval")) as out:
        out.write_json("metrics.json", {"metrics": {"AP50": 0.03}})
    picks, infos = {}, {}
    for strategy in ("auto", "random"):
        res = select_batch.run(select_batch.Config(dataset_uri=al_dataset, ledger_uri=l0, output_uri=str(tmp_path / f"w-{strategy}"),
                                                   strategy=strategy, budget=4, scores_uri=sc.scores_uri, device="cpu",
                                                   eval_uri=str(tmp_path / "eval")))
        picks[strategy] = select_batch.read_selection(res.selection_uri).column("image_id").to_pylist()
        infos[strategy] = res.info
    assert picks["auto"] == picks["random"]
    assert infos["auto"]["auto.choice"] == "random" and infos["auto"]["auto.model_ap50"] == 0.03


def test_config_errors():
    with pytest.raises(ConfigError, match="valid: auto, class_balanced"):
        load_config(select_batch.Config, {"dataset_uri": "d", "ledger_uri": "l", "output_uri": "o", "strategy": "best", "budget": 1})
    with pytest.raises(ConfigError, match="unknown score"):
        load_config(score_unlabeled.Config, {"checkpoint_uri": "c", "dataset_uri": "d", "ledger_uri": "l", "output_uri": "o", "scores": ["foo"]})
    with pytest.raises(ConfigError, match="shard"):
        load_config(score_unlabeled.Config, {"checkpoint_uri": "c", "dataset_uri": "d", "ledger_uri": "l", "output_uri": "o", "shard": "4/4"})


def test_cli_exit_codes(al_dataset, tmp_path, capsys):
    l0 = str(tmp_path / "l0")
    assert main(["stage", "init", "--dataset-uri", al_dataset, "--output-uri", l0, "--initial-size", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["labeled"] == 3
    out = str(tmp_path / "s1")
    assert main(["stage", "select-batch", "--dataset-uri", al_dataset, "--ledger-uri", l0, "--output-uri", out,
                 "--strategy", "uniform", "--budget", "4", "--uniform-n", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["selected"] == 4
    assert main(["stage", "select-batch", "--dataset-uri", al_dataset, "--ledger-uri", l0, "--output-uri", out,
                 "--strategy", "topk", "--budget", "4"]) == 2  # topk without scores
    assert "scores" in capsys.readouterr().err
    assert main(["stage", "oracle", "--ledger-uri", str(tmp_path / "missing"), "--output-uri", str(tmp_path / "o")]) == 2


def test_select_batch_on_s3(s3_bucket, tmp_path):
    ds = make_dataset(f"{s3_bucket}/ds", sequences=2, frames=4, val_sequences=0)
    l0 = run_init(ds, f"{s3_bucket}/ledger/0", size=2).ledger_uri
    res = select_batch.run(select_batch.Config(dataset_uri=ds, ledger_uri=l0, output_uri=f"{s3_bucket}/cycle1",
                                               strategy="random", budget=3))
    assert select_batch.read_selection(res.selection_uri).num_rows == 3
    assert L.counts(L.read_ledger(res.ledger_uri)[0]) == {"labeled": 2, "unlabeled": 3, "pending": 3}


@pytest.mark.parametrize("n, count, align", [(14, 4, 1), (14, 4, 4), (3, 5, 2), (0, 3, 8), (101, 7, 8)])
def test_shard_slices_partition_the_pool_at_batch_boundaries(n, count, align):
    ids = [f"i{k:03d}" for k in range(n)]
    parts = [score_unlabeled.shard_slice(ids, i, count, align) for i in range(count)]
    assert sum(parts, []) == ids
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    assert all(s % align == 0 for s, p in zip(starts, parts, strict=True) if p)
