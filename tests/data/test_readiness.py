"""validate/run/compile refuse a dataset that cannot carry a run, in one line naming the fix."""

from __future__ import annotations

import pytest
import yaml

from activedet.cli.main import main
from activedet.data.dataset import load_dataset
from activedet.data.readiness import check_run_ready
from activedet.errors import ConfigError


def test_empty_val_split_names_data_split(make_synth):
    ds = load_dataset(make_synth(sequences=4, frames=2, val_fraction=0.0, test_fraction=0.0))
    with pytest.raises(ConfigError, match=r"split 'val' .* has no images.*activedet data split"):
        check_run_ready(ds, initial_size=2)


def test_initial_size_above_the_pool(make_synth):
    ds = load_dataset(make_synth(sequences=4, frames=2, val_fraction=0.25, test_fraction=0.0))
    with pytest.raises(ConfigError, match="initial_size: 99 is more than the 6 train images"):
        check_run_ready(ds, initial_size=99)


@pytest.mark.parametrize("command", ["validate", "run", "compile"])
def test_commands_refuse_a_dataset_without_val_before_training(make_synth, tmp_path, capsys, command):
    uri = make_synth(sequences=4, frames=2, val_fraction=0.0, test_fraction=0.0)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "dataset": {"uri": uri}, "initial_size": 2, "budget": 2, "cycles": 2}))
    argv = {"validate": ["validate", str(cfg)], "run": ["run", str(cfg), "--run-dir", str(tmp_path / "run")],
            "compile": ["compile", str(cfg), "--local", "-o", str(tmp_path / "p.yaml")]}[command]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no images" in err[0] and "activedet data split" in err[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "p.yaml").exists()


def test_class_without_boxes_is_refused(make_synth, tmp_path):
    import pyarrow as pa

    from activedet import store
    from activedet.data.dataset import write_dataset_tables

    ds = load_dataset(make_synth(sequences=4, frames=2, val_fraction=0.25, test_fraction=0.0))
    extra = pa.table({"id": pa.array([99], pa.int32()), "name": ["unicorn"]}).cast(ds.categories.schema)
    cats = pa.concat_tables([ds.categories, extra])
    images = ds.images.set_column(1, "uri", pa.array([ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()]))
    out = str(tmp_path / "with-empty-class")
    with store.OutputWriter(out) as w:
        write_dataset_tables(w, images, ds.boxes, cats, {})
    with pytest.raises(ConfigError, match=r"'unicorn' \(id 99\) of .* has no boxes at all"):
        check_run_ready(load_dataset(out), initial_size=2)
