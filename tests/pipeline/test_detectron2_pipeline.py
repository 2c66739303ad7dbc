"""The detectron2 backend through the pipeline: validate's refusals, compile's image, a kfp.local run.

The run is the demo's pipeline (teacher, pseudo-labels, offline SSL student, evaluation, scoring,
selection, oracle; two cycles, warm start and resume checkpoints) with ``d2_faster_rcnn_R_50_FPN``
at an R-18 body and 64x128 images, sized for 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from activedet.cli.main import main
from activedet.pipeline.plan import load_experiment

ROOT = Path(__file__).resolve().parents[2]
HAS_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAS_D2, reason="detectron2 not installed (make test installs ../shared/vendor's wheel)")

D2_OPTIONS = {
    "min_size": 64, "max_size": 128,
    "overrides": {
        "MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.ROI_BOX_HEAD.FC_DIM": 64, "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 60,
        "MODEL.RPN.PRE_NMS_TOPK_TEST": 100, "MODEL.RPN.POST_NMS_TOPK_TEST": 30, "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 32,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    },
}


def d2_demo(**changes) -> dict:
    """configs/demo.yaml with the detectron2 preset at sizes a 2-core CI finishes in a minute or two."""
    data = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    training = {**data["training"], "preset": "d2_faster_rcnn_R_50_FPN", "preset_options": D2_OPTIONS,
                "teacher_iterations": 3, "student_iterations": 2, "batch_size": 2, "checkpoint_every": 2, "lr": 0.005,
                "warm_start": True, "backbone_weights": None}
    data.update(
        dataset={"synth": {"sequences": 8, "frames": 2, "seed": 0, "height": 64, "width": 128}},
        initial_size=4, budget=2, cycles=2, training=training, baselines=[],
        pseudo_labels={**data["pseudo_labels"], "max_pool_images": 4, "params": {"tau": 0.05}},
        acquisition={"score": "mc_dropout", "strategy": "topk", "shards": 1}, ssl={**data["ssl"], "enabled": True},
        mlflow={**data.get("mlflow", {}), "tracking_uri": None}, store_root=None,
    )
    for key, value in changes.items():
        section, _, field = key.partition(".")
        data[section] = {**data.get(section, {}), field: value} if field else value
    return data


@pytest.mark.parametrize(("change", "feature"), [
    ({"ssl.mode": "mean_teacher"}, "ssl.mode mean_teacher"),
    ({"training.preset_options": {**D2_OPTIONS, "box_head": "certainty"}}, "preset_options.box_head certainty"),
    ({"training.backbone_weights": "imagenet"}, "training.backbone_weights"),
])
def test_validate_rejects_what_detectron2_cannot_give(change, feature, tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(d2_demo(**change)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert feature in err and "detectron2 backend" in err and "d2_faster_rcnn_R_50_FPN" in err


def test_validate_accepts_the_d2_demo(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(d2_demo()))
    assert main(["validate", str(path)]) == 0


def test_compile_puts_d2_model_stages_on_the_detectron2_image(compile_docs, tmp_path):
    from activedet.images import cpu_image, gpu_d2_image
    from activedet.pipeline.components import is_gpu

    exp = load_experiment(d2_demo())
    spec, _, _ = compile_docs(exp, tmp_path, platform=False)
    images = {name.removeprefix("exec-"): e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    model = {n: i for n, i in images.items() if is_gpu(n.rsplit("-", 1)[0] if n[-1].isdigit() else n)}
    assert model and set(model.values()) == {gpu_d2_image()}
    assert set(images.values()) == {gpu_d2_image(), cpu_image()}


def test_gpu_d2_image_builds_detectron2_with_cuda_on_the_gpu_image():
    text = (ROOT / "images/gpu-d2/Dockerfile").read_text()
    assert "FROM ${BASE}" in text and "FORCE_CUDA=1" in text and "setuptools<80" in text
    assert "--build-arg BASE=" in (ROOT / "Makefile").read_text()


@needs_d2
@pytest.mark.slow
def test_d2_demo_runs_two_cycles_through_kfp_local(tmp_path):
    import json

    from activedet import schema, store
    from activedet.models.checkpoint import read_checkpoint_meta
    from activedet.pipeline.local import run_local

    exp = load_experiment(d2_demo())
    outcome = run_local(exp, tmp_path / "run")
    assert outcome.state == "SUCCEEDED"
    lay = outcome.layout
    assert [r["labeled"] for r in outcome.rows] == [4, 6]
    for k in range(2):
        meta = read_checkpoint_meta(lay.model(k))
        assert meta["preset"] == "d2_faster_rcnn_R_50_FPN" and meta["backend"] == "detectron2"
        assert "config_yaml" in meta["options"]
        metrics = json.loads(Path(store.local_path(store.join(lay.eval(k), "metrics.json"))).read_text())["metrics"]
        assert 0.0 <= metrics["AP"] <= 1.0
    pseudo = store.read_table(store.join(lay.pseudo_labels(0), "pseudo_boxes.parquet"))
    schema.validate_boxes(pseudo, where="pseudo")
    scores = store.read_table(store.join(lay.scores(0), "scores.parquet"))
    assert "mc_dropout" in scores.column_names and scores.num_rows > 0
    teacher1 = read_checkpoint_meta(lay.teacher(1))
    assert teacher1["weights_init"]["init_checkpoint"]["report"]["backbone_share"] == 1.0  # warm start from cycle 0


def test_local_run_without_detectron2_fails_before_any_stage(tmp_path, monkeypatch):
    import sys

    from activedet.errors import ConfigError
    from activedet.pipeline.local import run_local

    monkeypatch.setitem(sys.modules, "detectron2", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="needs detectron2"):
        run_local(load_experiment(d2_demo()), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
