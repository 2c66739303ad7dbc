"""init-config: a commented experiment sized to the dataset that validate accepts as written."""

from __future__ import annotations

from pathlib import Path

import yaml

from activedet.cli.main import main
from activedet.pipeline.init_config import propose, render_yaml
from activedet.pipeline.plan import load_experiment


def test_written_config_validates_and_explains_every_value(make_synth, tmp_path, capsys):
    uri = make_synth(sequences=10, frames=4, val_fraction=0.2, test_fraction=0.0)
    out = tmp_path / "exp.yaml"
    assert main(["-q", "init-config", uri, "-o", str(out), "--minutes", "5", "--no-measure"]) == 0
    text = out.read_text()
    data = yaml.safe_load(text)
    exp = load_experiment(data)  # what `activedet run` would load
    assert exp.dataset.uri == uri and exp.device in ("cpu", "cuda")
    assert 1 <= exp.initial_size < 32 and exp.initial_size + (exp.cycles - 1) * exp.budget <= 0.6 * 32
    keys = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#") and not ln.rstrip().endswith(":")]
    lines = text.splitlines()
    for key in keys:  # every value has its reason on the line above
        assert lines[lines.index(key) - 1].strip().startswith("#"), key
    assert "redundant pool" in text  # SynthDrive frames come in near-duplicate sequences
    assert main(["-q", "init-config", uri, "-o", str(out), "--no-measure"]) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err


def test_small_boxes_get_a_larger_input(tmp_path):
    """traffic-cams: 22-px median boxes on 640-px frames would shrink to 9 px at tiny's default input."""
    import pytest

    from activedet.data.split import split_dataset
    from activedet.data.yolo import import_yolo

    data_yaml = next((p for p in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared"))
                      if (p / "datasets/traffic-cams/data.yaml").is_file()), None)
    if data_yaml is None:
        pytest.skip("traffic-cams not found")
    imported = import_yolo(str(data_yaml / "datasets/traffic-cams/data.yaml"), out_uri=str(tmp_path / "cams"))["uri"]
    split = split_dataset(imported, str(tmp_path / "split"))["uri"]
    proposal = propose(split, minutes=5, measure=False)
    options = proposal.config["training"]["preset_options"]
    assert options["max_size"] > 256 and options["min_size"] > 128
    assert "smallest anchor" in proposal.comments["training.preset_options"]
    load_experiment(yaml.safe_load(render_yaml(proposal)))
