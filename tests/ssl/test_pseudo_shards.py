"""Sharded pseudo-labeling: shards' candidates + merge-pseudo-labels == one unsharded generate-pseudo-labels run."""

import json
import os

import pyarrow.parquet as pq
import pytest

from activedet.config import load_config
from activedet.errors import ActivedetError
from activedet.stages import generate_pseudo_labels as gen
from activedet.stages import merge_pseudo_labels as merge


def _gen(ssl_setup, out, **extra):
    ds, ledger, teacher, _, _ = ssl_setup
    return gen.run(load_config(gen.Config, {
        "teacher_checkpoint_uri": teacher, "dataset_uri": ds, "ledger_uri": ledger, "output_uri": out,
        "min_score": 0.05, "max_pool_images": 10, "batch_size": 2, "device": "cpu", "seed": 4, **extra,
    }))


def _merge(ssl_setup, out, shard_uris, **extra):
    ds, ledger, _, _, _ = ssl_setup
    return merge.run(load_config(merge.Config, {
        "dataset_uri": ds, "ledger_uri": ledger, "shard_uris": shard_uris, "output_uri": out, "max_pool_images": 10, "seed": 4,
        **extra,
    }))


def _read(out):
    table = pq.read_table(os.path.join(out, "pseudo_boxes.parquet"))
    return table, json.load(open(os.path.join(out, "thresholds.json")))


@pytest.mark.parametrize("filt", [
    {"filter": "act", "filter_params": {"alpha": 50, "subset_size": 6}},  # ranks over the whole pool, estimated on a subset
    {"filter": "dynamic", "filter_params": {"tau": 0.18, "tau_min": 0.05}},  # class sums / mean over classes
])
def test_three_shards_and_merge_equal_one_run(ssl_setup, tmp_path, filt):
    whole = _gen(ssl_setup, str(tmp_path / "whole"), **filt)
    shard_uris = [str(tmp_path / f"shard-{i}") for i in range(3)]
    images = [_gen(ssl_setup, uri, shard=f"{i}/3", **filt)["images"] for i, uri in enumerate(shard_uris)]
    assert sum(images) == whole["pool_images"] and all(n % 2 == 0 for n in images[:-1])  # batch-aligned slices
    assert not os.path.exists(os.path.join(shard_uris[0], "pseudo_boxes.parquet"))  # a shard does not filter
    merged = _merge(ssl_setup, str(tmp_path / "merged"), list(reversed(shard_uris)), **filt)
    assert whole["candidates"] > 0 and whole["pseudo_boxes"] > 0
    if filt["filter"] == "act":
        assert whole["pseudo_boxes"] < whole["candidates"]  # ranks against the whole pool's expected counts cut
    for key in ("pool_images", "candidates", "pseudo_boxes", "reliable_boxes", "precision", "recall"):
        assert merged[key] == whole[key], key
    (t1, th1), (t2, th2) = _read(str(tmp_path / "whole")), _read(str(tmp_path / "merged"))
    assert t1.equals(t2)
    assert th1 == th2  # per-class thresholds from the global statistics
    pool = pq.read_table(os.path.join(tmp_path / "merged", "pool_images.parquet"))
    assert pool.equals(pq.read_table(os.path.join(tmp_path / "whole", "pool_images.parquet")))


def test_merge_refuses_missing_shards_and_another_pool(ssl_setup, tmp_path):
    uris = [str(tmp_path / f"shard-{i}") for i in range(2)]
    for i, uri in enumerate(uris):
        _gen(ssl_setup, uri, shard=f"{i}/2")
    with pytest.raises(ActivedetError, match="expected shards 0..1 of 2"):
        _merge(ssl_setup, str(tmp_path / "m1"), uris[:1])
    with pytest.raises(ActivedetError, match="another pool"):
        _merge(ssl_setup, str(tmp_path / "m2"), uris, max_pool_images=8)


def test_bad_shard_spec_is_a_config_error(ssl_setup, tmp_path):
    with pytest.raises(Exception, match="shard"):
        _gen(ssl_setup, str(tmp_path / "x"), shard="2/2")
