"""Fail fast at load: `activedet validate` (and compile/run) reject bad configs in one line, exit 2."""

from __future__ import annotations

import json

import pytest
import yaml

from activedet.cli.main import main
from activedet.pipeline import plan
from activedet.pipeline.plan import load_experiment

BASE = {
    "name": "v",
    "dataset": {"synth": {"sequences": 10, "frames": 2, "height": 64, "width": 128}},
    "initial_size": 4,
    "budget": 2,
    "cycles": 2,
}

#: (change to BASE, the key path the one-line error must name)
BAD = [
    ({"training": {"preset": "huge"}}, "training.preset"),
    ({"training": {"preset_options": {"min_sise": 3}}}, "training.preset_options.min_sise"),
    ({"pseudo_labels": {"filter": "magic"}}, "pseudo_labels.filter"),
    ({"pseudo_labels": {"params": {"tau": 2}}}, "pseudo_labels.params"),
    ({"pseudo_labels": {"params": {"k": 2}}}, "pseudo_labels.params"),
    ({"acquisition": {"score": "vibes"}}, "acquisition.score"),
    ({"acquisition": {"strategy": "psychic"}}, "acquisition.strategy"),
    ({"acquisition": {"score": "unified", "strategy": "topk"}}, "acquisition.score"),
    ({"acquisition": {"strategy": "prefilter_coreset", "strategy_params": {"prefilter_factr": 3}}},
     "acquisition.strategy_params.prefilter_factr"),
    ({"acquisition": {"score_params": {"mc_sampels": 3}}}, "acquisition.score_params.mc_sampels"),
    ({"stopping": {"metric": "APX"}}, "stopping.metric"),
    ({"device": "tpu"}, "device"),
    ({"dataset": {"uri": "/nonexistent/activedet/data"}}, "dataset.uri"),
    ({"initial_size": 5000}, "initial_size"),
    ({"ssl": {"mode": "mean_teacher", "mean_teacher": {"thresholds": "dynamik"}}}, "ssl.mean_teacher.thresholds"),
    ({"ssl": {"mode": "mean_teacher", "mean_teacher": {"dynamic": {"tau_min": 0.95}}}}, "ssl.mean_teacher.dynamic"),
]


def _write(tmp_path, change: dict, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**BASE, **change}))
    return path


@pytest.mark.parametrize("change, key", BAD, ids=[k for _, k in BAD])
def test_bad_config_fails_validate_in_one_line_naming_the_key(change, key, tmp_path, capsys):
    path = _write(tmp_path, change)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("activedet: error:")
    assert f" {key}:" in err or f" {key} " in err, err


@pytest.mark.parametrize("change, key", [BAD[7], BAD[8]], ids=["unified-topk", "prefilter-typo"])
def test_compile_and_run_refuse_before_writing_anything(change, key, tmp_path, capsys):
    path = _write(tmp_path, change)
    out, run_dir = tmp_path / "p.yaml", tmp_path / "run"
    assert main(["compile", str(path), "--local", "-o", str(out)]) == 2
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all(key in e for e in errs)
    assert not out.exists() and not run_dir.exists()


def test_validate_prints_every_stage_config(tmp_path, capsys):
    path = _write(tmp_path, {"acquisition": {"strategy": "prefilter_coreset", "strategy_params": {"prefilter_factor": 4}}})
    assert main(["validate", str(path), "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert set(stages) == {"init", "cycle-00", "cycle-01"}
    select = stages["cycle-00"]["select-batch"]
    assert (select["strategy"], select["budget"], select["prefilter_factor"]) == ("prefilter_coreset", 2, 4.0)
    score = stages["cycle-00"]["score-unlabeled"]
    assert score["scores"] == ["entropy", "embedding"] and score["include_labeled"]  # what the strategy reads
    assert "select-batch" not in stages["cycle-01"]  # the last cycle does not select


def test_unset_experiment_fields_mean_the_stage_defaults():
    from activedet.stages import train_student_ssl, train_teacher

    configs = plan.resolve(load_experiment(BASE))["cycle-00"]
    assert configs["train-teacher"]["iterations"] == train_teacher.Config.model_fields["iterations"].default
    assert configs["train-student-ssl"]["iterations"] == train_student_ssl.Config.model_fields["iterations"].default
    assert configs["train-teacher"]["checkpoint_every"] == train_teacher.Config.model_fields["checkpoint_every"].default
    configs = plan.resolve(load_experiment({**BASE, "training": {"teacher_iterations": 7}}))["cycle-00"]
    assert configs["train-teacher"]["iterations"] == 7


def test_cluster_compile_refuses_pod_local_storage(tmp_path, capsys):
    path = _write(tmp_path, {"cycles": 1})
    out = tmp_path / "p.yaml"
    assert main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "store_root" in err and "s3://" in err and "--local" in err and not out.exists()
    assert main(["compile", str(path), "--local", "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_stage_table_is_the_only_list():
    """Every stage module declares its name and image; components are generated from the stage table."""
    import inspect

    from activedet.pipeline.components import KINDS, STAGE_FUNCTIONS
    from activedet.stages import STAGES, stage_module

    continuous_only = {"ingest", "import-labels"}  # no from_experiment: activedet.ops.continuous builds them
    assert set(STAGE_FUNCTIONS) == set(STAGES) - continuous_only
    for name in STAGES:
        module = stage_module(name)
        assert module.NAME == name and module.IMAGE in ("gpu", "cpu")
    for name, func in STAGE_FUNCTIONS.items():
        assert KINDS[func] == stage_module(name).IMAGE
        assert f"steps.run_stage({name!r}" in inspect.getsource(func)  # KFP ships this source
    params = inspect.signature(STAGE_FUNCTIONS["select-batch"]).parameters
    assert params["budget"].annotation is int and inspect.signature(STAGE_FUNCTIONS["score-unlabeled"]).parameters["shard"].default == 0


def test_one_cycle_run_still_checks_its_acquisition_settings(tmp_path, capsys):
    """A one-cycle run never selects; `strategy: psychic` must fail anyway, not 'succeed'."""
    path = _write(tmp_path, {"cycles": 1, "acquisition": {"strategy": "psychic"}})
    assert main(["validate", str(path)]) == 2
    assert "acquisition.strategy" in capsys.readouterr().err
