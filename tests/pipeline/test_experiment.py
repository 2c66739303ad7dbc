"""The experiment config: validation, one-line errors, shipped presets."""

from __future__ import annotations

import pytest

from activedet.cli.main import main
from activedet.errors import ConfigError
from activedet.pipeline import plan
from activedet.pipeline.plan import load_experiment

BASE = {"name": "t", "dataset": {"uri": "s3://data/x"}, "initial_size": 10, "budget": 5, "cycles": 3}


def test_shipped_presets_follow_their_protocols(demo_experiment, cluster_experiment):
    assert demo_experiment.dataset.synth is not None and demo_experiment.device == "cpu"
    assert (demo_experiment.training.preset, demo_experiment.training.backbone_weights) == ("lite0_fpn", "imagenet")
    assert demo_experiment.baselines == ["random"] and not demo_experiment.ssl.enabled
    c = cluster_experiment
    assert (c.training.preset, c.initial_size, c.budget, c.cycles) == ("resnet50_fpn", 2000, 1000, 5)
    assert c.pseudo_labels.params["tau"] == 0.99 and c.device == "cuda"
    assert c.kubernetes.s3_secret and c.kubernetes.accelerator_limit == 1


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'budjet' \(valid keys: .*budget.*cycles"):
        load_experiment({**BASE, "budjet": 3})


def test_unknown_nested_key_lists_that_sections_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'kubernetes.gpus' \(valid keys: accelerator_limit"):
        load_experiment({**BASE, "kubernetes": {"gpus": 1}})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": {"uri": "/x", "synth": {"sequences": 4}}}, "exactly one of dataset.uri and dataset.synth"),
        ({"dataset": {}}, "exactly one of dataset.uri and dataset.synth"),
        ({"stopping": {"budget_cap": 5}}, "budget_cap .* below initial_size"),
        ({"kubernetes": {"shm_size": "lots"}}, "not a Kubernetes quantity"),
        ({"cycles": 0}, "'cycles'"),
        ({"name": "Has Spaces"}, "'name'"),
    ],
)
def test_bad_values_give_one_line_errors(change, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_experiment({**BASE, **change})
    assert "\n" not in str(info.value)


def test_cli_reports_bad_config_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ndataset: {uri: /x}\ninitial_size: 1\nbudget: 1\ncycles: 1\nbogus: 1\n")
    assert main(["compile", str(bad), "-o", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("activedet: error:") and "bogus" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_budget_cap_limits_the_last_batch():
    exp = load_experiment({**BASE, "stopping": {"budget_cap": 22}})
    assert plan.next_budget(exp, 10) == 5
    assert plan.next_budget(exp, 20) == 2
    assert plan.next_budget(exp, 22) == 0
    assert plan.next_budget(load_experiment(BASE), 10**6) == 5


def test_stop_reasons():
    from activedet.pipeline.steps import _stop_reason

    exp = load_experiment({**BASE, "stopping": {"target_ap": 0.5, "metric": "AP50", "budget_cap": 20}})
    row = {"labeled": 10, "unlabeled": 50}
    assert _stop_reason(exp, 0, row, {"AP50": 0.4}) is None
    assert "reached target" in _stop_reason(exp, 0, row, {"AP50": 0.6})
    assert _stop_reason(exp, 2, row, {"AP50": 0.1}) == "last cycle"
    assert "budget cap" in _stop_reason(exp, 0, {"labeled": 20, "unlabeled": 5}, {})
    assert "pool is empty" in _stop_reason(exp, 0, {"labeled": 10, "unlabeled": 0}, {})
