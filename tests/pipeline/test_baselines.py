"""Baseline arms (``baselines: [random]``): shared cycle 0, own outputs, validation and the comparison."""

from __future__ import annotations

import pytest

from activedet.errors import ConfigError
from activedet.pipeline.layout import RunLayout
from activedet.pipeline.plan import arm_cycle_stages, load_experiment, resolve
from activedet.pipeline.report import compare_arms

BASE = {"name": "arms", "dataset": {"synth": {"sequences": 10, "frames": 4}}, "initial_size": 4, "budget": 4, "cycles": 3,
        "acquisition": {"score": "entropy", "strategy": "topk"}, "baselines": ["random"]}


def test_an_arm_shares_cycle_0_and_keeps_its_own_selections_and_cycles():
    exp = load_experiment(BASE)
    main, arm = RunLayout("s3://b/run", exp), RunLayout("s3://b/run", exp.arm("random"), "random")
    assert arm.ledger(0) == main.ledger(0) and arm.teacher(0) == main.teacher(0) and arm.eval(0) == main.eval(0)
    assert arm.summary_row(0) == main.summary_row(0)
    assert arm.selection(0) == "s3://b/run/baselines/random/cycle-00/selection" != main.selection(0)
    assert arm.ledger(1) == "s3://b/run/baselines/random/ledgers/cycle-01" and arm.teacher(1).startswith("s3://b/run/baselines/random/")
    assert exp.arm("random").acquisition.strategy == "random" and exp.arm("random").baselines == []


def test_resolve_builds_every_arm_config_and_random_skips_scoring():
    exp = load_experiment(BASE)
    configs = resolve(exp)
    assert [k for k in configs if k.startswith("random/")] == ["random/cycle-00", "random/cycle-01", "random/cycle-02"]
    assert list(configs["random/cycle-00"]) == ["select-batch", "oracle"]  # no training in cycle 0, no scores for random
    assert configs["random/cycle-00"]["select-batch"]["strategy"] == "random"
    assert configs["random/cycle-00"]["select-batch"]["scores_uri"] is None
    assert "score-unlabeled" in configs["cycle-00"] and "train-teacher" in configs["random/cycle-01"]
    assert [s for s, _ in arm_cycle_stages(exp, 2, "random")][:1] == ["train-teacher"]


@pytest.mark.parametrize(("change", "message"), [
    ({"baselines": ["psychic"]}, "baselines: unknown selection strategy 'psychic'; valid: auto"),
    ({"baselines": ["topk"]}, "must be distinct and differ from acquisition.strategy"),
    ({"baselines": ["random", "random"]}, "must be distinct"),
    ({"labeling": "export", "cycles": 1}, "baselines compare strategies in simulation"),
])
def test_bad_baselines_fail_at_load(change, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment({**BASE, **change})


def test_compare_arms_against_a_hand_computation():
    def rows(ys):  # a pool of 100: 10, 20, 30 % labeled
        return [{"cycle": k, "labeled": 10 * (k + 1), "unlabeled": 100 - 10 * (k + 1), "AP50": y, "AP": y / 2}
                for k, y in enumerate(ys)]

    run, random = rows([0.2, 0.5, 0.6]), rows([0.2, 0.3, 0.5])
    vs = compare_arms(run, random)
    # AUC: 10*(0.2+0.5)/2 + 10*(0.5+0.6)/2 = 9.0 vs 10*(0.2+0.3)/2 + 10*(0.3+0.5)/2 = 6.5
    assert vs["auc_diff.AP50"] == pytest.approx(2.5)
    # random first reaches its final 0.5 at 30 labels; the run at 20: 10 labels saved
    assert vs["labels_saved.AP50"] == pytest.approx(10.0)
    worse = compare_arms(rows([0.2, 0.25, 0.3]), random)  # never reaches 0.5: charged its final 30 labels
    assert worse["labels_saved.AP50"] == 0.0 and worse["auc_diff.AP50"] < 0
    assert compare_arms(run, random[:1])["auc_diff.AP50"] == 0.0  # compared up to the shorter curve's budget
