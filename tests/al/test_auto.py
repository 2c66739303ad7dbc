"""strategy: auto -- the redundancy measurement and the Table 6 choice (Mittal et al.)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from activedet.al.redundancy import measure_redundancy, nearest_neighbours
from activedet.al.selection import SelectionInput, SelectionParams, auto_choice, required_columns, select
from activedet.stages import select_batch


def _video_pool(sequences: int, frames: int, dim: int = 32, jitter: float = 0.01, seed: int = 0):
    """``sequences`` random scenes, each ``frames`` near-copies (consecutive frames of a video)."""
    rng = np.random.default_rng(seed)
    scenes = rng.normal(size=(sequences, dim))
    emb = np.repeat(scenes, frames, axis=0) + jitter * rng.normal(size=(sequences * frames, dim))
    seq = [f"s{k // frames}" for k in range(sequences * frames)]
    return emb.astype(np.float32), seq


def test_nearest_neighbours_match_brute_force():
    x = np.random.default_rng(1).normal(size=(37, 5)).astype(np.float32)
    groups = np.arange(37) // 4
    index, dist, other = nearest_neighbours(x, groups=groups, block=8)
    full = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(full, np.inf)
    assert (index == full.argmin(1)).all()
    assert dist == pytest.approx(full.min(1), abs=1e-4)
    full[groups[:, None] == groups[None, :]] = np.inf
    assert other == pytest.approx(full.min(1), abs=1e-4)
    some = np.array([3, 30, 7])
    assert (nearest_neighbours(x, some, block=2)[0] == index[some]).all()


def test_video_frames_are_redundant_and_independent_images_are_not():
    emb, seq = _video_pool(20, 10)
    video = measure_redundancy(emb, seq)
    assert video.near_duplicate_share == 1.0 and video.within_sequence_share == 1.0 and video.measured == 200
    diverse = measure_redundancy(np.random.default_rng(2).normal(size=(200, 32)), [f"s{k}" for k in range(200)])
    assert diverse.near_duplicate_share == 0.0 and math.isnan(diverse.within_sequence_share)
    # half the pool in videos, half independent: about half is redundant
    mixed = np.r_[emb[:100], np.random.default_rng(3).normal(size=(100, 32))]
    share = measure_redundancy(mixed, seq[:100] + [f"x{k}" for k in range(100)]).near_duplicate_share
    assert share == pytest.approx(0.5, abs=0.02)


def test_anisotropic_embeddings_of_independent_scenes_are_not_redundant():
    """Pooled features share a big common component: every pair looks close next to random pairs.

    The scale is the distance to the nearest *other-sequence* image, so independent frames stay
    diverse however tight the cloud is, while sequences of near-copies inside it stay redundant.
    """
    rng = np.random.default_rng(7)
    common = 10.0 * rng.normal(size=32)
    independent = common + 0.1 * rng.normal(size=(200, 32))
    assert measure_redundancy(independent, [f"s{k}" for k in range(200)]).near_duplicate_share < 0.05
    scenes = common + 0.1 * rng.normal(size=(10, 32))
    video = np.repeat(scenes, 20, axis=0) + 0.002 * rng.normal(size=(200, 32))
    assert measure_redundancy(video, [f"s{k // 20}" for k in range(200)]).near_duplicate_share > 0.95


def test_measure_is_scale_free_and_samples_large_pools():
    emb, seq = _video_pool(30, 5)
    assert measure_redundancy(emb * 1000.0, seq).near_duplicate_share == measure_redundancy(emb, seq).near_duplicate_share
    sampled = measure_redundancy(np.tile(emb, (4, 1)), seq * 4, max_queries=100, seed=4)
    assert sampled.measured == 100 and sampled.near_duplicate_share == 1.0  # queries sampled, neighbours from the whole pool


def test_choice_follows_the_table_6_axes_with_the_measured_defaults():
    params = SelectionParams()  # redundant at 0.5; on a diverse pool, low budget under 1 %
    assert auto_choice(0.8, 0.5, params) == "unified" and auto_choice(0.8, 40.0, params) == "unified"
    assert auto_choice(0.1, 0.5, params) == "random" and auto_choice(0.1, 2.0, params) == "topk"
    paper = SelectionParams(auto_redundant_strategy="coreset", auto_low_budget_pct=5.0)  # Table 6 as printed
    assert auto_choice(0.8, 2.0, paper) == "coreset" and auto_choice(0.1, 2.0, paper) == "random"
    assert auto_choice(0.1, 20.0, paper) == "topk"


def test_a_model_too_weak_to_rank_gets_the_low_budget_strategy_whatever_the_pool():
    params = SelectionParams()  # random while the held-out AP50 is under 0.2
    assert auto_choice(0.8, 2.0, params, model_ap50=0.05) == "random" and auto_choice(0.1, 20.0, params, 0.05) == "random"
    assert auto_choice(0.8, 2.0, params, model_ap50=0.45) == "unified" and auto_choice(0.1, 2.0, params, 0.45) == "topk"
    assert auto_choice(0.8, 2.0, params, model_ap50=None) == "unified"  # quality unknown: the pool decides
    assert auto_choice(0.8, 2.0, SelectionParams(auto_min_ap50=0.0), model_ap50=0.0) == "unified"  # 0 turns the cell off


def test_auto_asks_score_unlabeled_for_every_column_its_candidates_read():
    assert set(required_columns("auto", "entropy")) == {"entropy", "inconsistency", "embedding"}
    mine = SelectionParams.from_strategy_params({"auto_redundant_strategy": "coreset", "prefilter_factor": 2.0})
    assert set(required_columns("auto", "mc_dropout", mine)) == {"mc_dropout", "embedding"}
    assert mine.prefilter_factor == 2.0


def test_an_unknown_auto_choice_fails_at_config_time_listing_the_valid_ones():
    with pytest.raises(ValueError, match="for auto to choose; valid: .*coreset") as err:
        select_batch.Config(dataset_uri="d", ledger_uri="l", output_uri="o", budget=1, strategy="auto",
                            auto_redundant_strategy="kcenter")
    assert "auto," not in str(err.value).split("valid:")[1]


def _input(emb, seq, labeled_share: float, budget: int = 5):
    ids = [f"i{k:03d}" for k in range(len(emb))]
    n_lab = max(1, int(round(labeled_share * len(ids))))
    labeled = ids[::max(1, len(ids) // n_lab)][:n_lab]
    pool = sorted(set(ids) - set(labeled))
    rng = np.random.default_rng(5)
    scores = pa.table({
        "image_id": ids, "entropy": pa.array(rng.random(len(ids)), pa.float64()),
        "inconsistency": pa.array(rng.random(len(ids)), pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1]),
    })
    images = pa.table({"image_id": ids, "sequence_id": seq, "frame_index": pa.array([0] * len(ids), pa.int32())})
    return SelectionInput(pool, budget, seed=1, scores=scores, images=images, labeled=labeled, params=SelectionParams(device="cpu"))


@pytest.mark.parametrize(("pool", "labeled_share", "expected"), [
    ("video", 0.02, "unified"), ("diverse", 0.005, "random"), ("diverse", 0.02, "topk"),
])
def test_auto_picks_what_the_chosen_strategy_picks_and_says_why(pool, labeled_share, expected):
    if pool == "video":
        emb, seq = _video_pool(20, 10)
    else:
        emb = np.random.default_rng(6).normal(size=(200, 32)).astype(np.float32)
        seq = [f"s{k}" for k in range(200)]
    inp = _input(emb, seq, labeled_share)
    picked = select("auto", inp)
    assert picked.info["auto.choice"] == expected
    assert picked.ids == select(expected, inp).ids
    assert 0.0 <= picked.info["auto.near_duplicate_share"] <= 1.0
    assert picked.info["auto.labeled_pct"] == pytest.approx(100.0 * len(inp.labeled) / 200)
    assert picked.info["auto.model_ap50"] is None


def test_auto_on_a_weak_model_picks_what_random_picks_and_logs_the_model_quality():
    from dataclasses import replace

    emb, seq = _video_pool(20, 10)
    inp = replace(_input(emb, seq, 0.02), model_ap50=0.04)
    picked = select("auto", inp)
    assert picked.info["auto.choice"] == "random" and picked.info["auto.model_ap50"] == 0.04
    assert picked.ids == select("random", inp).ids


def _auto_experiment(**strategy_params):
    from pathlib import Path

    from activedet.pipeline.plan import load_experiment

    data = load_experiment(Path(__file__).parents[2] / "configs" / "demo.yaml").model_dump(mode="json")
    data["acquisition"].update(strategy="auto", score="entropy", strategy_params=strategy_params)
    return load_experiment(data)


def test_an_experiment_with_auto_scores_what_its_choices_read_and_rejects_unknown_choices():
    from activedet.errors import ConfigError
    from activedet.pipeline import plan

    scoring = plan.stage_config("score-unlabeled", _auto_experiment(), "/tmp/run", 0)
    assert {"entropy", "inconsistency", "embedding"} <= set(scoring.scores) and scoring.include_labeled
    plain = plan.stage_config("score-unlabeled", _auto_experiment(auto_redundant_strategy="coreset"), "/tmp/run", 0)
    assert "inconsistency" not in plain.scores
    with pytest.raises(ConfigError, match="auto_diverse_strategy.*for auto to choose"):
        _auto_experiment(auto_diverse_strategy="best")


def test_select_batch_of_an_auto_experiment_reads_the_cycles_evaluation():
    from activedet.pipeline import plan

    config = plan.stage_config("select-batch", _auto_experiment(), "/tmp/run", 1)
    assert config.eval_uri == "/tmp/run/cycle-01/eval"  # evaluate ran on the model that scored the pool
    fixed = plan.stage_config("select-batch", load_experiment_with(strategy="topk"), "/tmp/run", 1)
    assert fixed.eval_uri is None


def load_experiment_with(**acquisition):
    from pathlib import Path

    from activedet.pipeline.plan import load_experiment

    data = load_experiment(Path(__file__).parents[2] / "configs" / "demo.yaml").model_dump(mode="json")
    data["acquisition"].update(acquisition)
    return load_experiment(data)


@pytest.mark.parametrize(("metrics", "error"), [(None, "no evaluate output"), ({"AP": 0.1}, "metrics.AP50 is None"),
                                                ({"AP50": 42.0}, "not a number in")])
def test_a_missing_or_bad_evaluation_fails_naming_the_file(tmp_path, metrics, error):
    from activedet import store
    from activedet.errors import ActivedetError

    if metrics is not None:
        with store.OutputWriter(str(tmp_path / "eval")) as out:
            out.write_json("metrics.json", {"metrics": metrics})
    with pytest.raises(ActivedetError, match=error) as err:
        select_batch.read_model_ap50(str(tmp_path / "eval"))
    assert "metrics.json" in str(err.value)


def test_an_auto_min_ap50_outside_0_1_fails_at_load_time():
    from activedet.errors import ConfigError

    with pytest.raises(ConfigError, match="auto_min_ap50"):
        _auto_experiment(auto_min_ap50=20)
