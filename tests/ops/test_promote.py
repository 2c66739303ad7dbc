"""The promote stage: the champion alias moves only when the new model is better (sqlite MLflow)."""

from __future__ import annotations

import pytest

from activedet import store
from activedet.errors import ActivedetError, ConfigError
from activedet.stages import promote


def _candidate(root: str, name: str, ap: float) -> tuple[str, str]:
    ckpt, ev = store.join(root, name, "model"), store.join(root, name, "eval")
    with store.OutputWriter(ckpt) as out:
        out.write_bytes("model.safetensors", b"weights-" + name.encode())
    with store.OutputWriter(ev) as out:
        out.write_json("metrics.json", {"metrics": {"AP": ap, "AP50": ap + 0.1}, "per_class": [{"name": "car", "AP": ap}]})  # evaluate's layout
    return ckpt, ev


def test_promotion_only_on_improvement(tmp_path):
    root, db = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'mlflow.db'}"

    def promote_run(name, ap, **kw):
        ckpt, ev = _candidate(root, name, ap)
        return promote.run(promote.Config(checkpoint_uri=ckpt, eval_uri=ev, mlflow_tracking_uri=db, **kw))

    first = promote_run("c1", 0.30)
    assert first.promoted and first.reason == "no current champion" and first.version == "1"
    worse = promote_run("c2", 0.25)
    assert not worse.promoted and worse.champion_version == "1"
    assert worse.champion_checkpoint_uri.endswith("c1/model") and worse.champion_value == pytest.approx(0.30)
    equal = promote_run("c3", 0.30)
    assert not equal.promoted  # a tie is not an improvement
    better = promote_run("c4", 0.35)
    assert better.promoted and better.previous_version == "1" and better.champion_version == "4"
    small = promote_run("c5", 0.36, min_delta=0.05)
    assert not small.promoted and small.champion_version == "4"

    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=db, registry_uri=db).get_model_version_by_alias("activedet-detector", "champion")
    assert str(mv.version) == "4" and mv.tags[promote.TAG_CHECKPOINT].endswith("c4/model")


def test_bad_inputs(tmp_path):
    root, db = str(tmp_path / "store"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt, ev = _candidate(root, "c", 0.3)
    with pytest.raises(ConfigError, match="registry_uri or mlflow_tracking_uri"):
        promote.run(promote.Config(checkpoint_uri=ckpt, eval_uri=ev))
    with pytest.raises(ActivedetError, match="metric 'mAP' not found"):
        promote.run(promote.Config(checkpoint_uri=ckpt, eval_uri=ev, metric="mAP", mlflow_tracking_uri=db))
    with pytest.raises(ActivedetError, match="no output at .*missing"):
        promote.run(promote.Config(checkpoint_uri=store.join(root, "missing"), eval_uri=ev, mlflow_tracking_uri=db))
