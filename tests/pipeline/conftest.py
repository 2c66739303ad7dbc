"""Fixtures of the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activedet.pipeline.plan import load_experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster_experiment():
    """The GPU-cluster preset shipped in configs/."""
    return load_experiment(ROOT / "configs" / "voc_r50_cluster.yaml")


@pytest.fixture(scope="session")
def demo_experiment():
    return load_experiment(ROOT / "configs" / "demo.yaml")


def _compile_docs(exp, tmp_path: Path, *, platform: bool = True) -> tuple[dict, dict | None, Path]:
    """Compile ``exp``; returns (pipeline spec dict, platform spec dict or None, YAML path)."""
    from activedet.pipeline.dag import compile_pipeline

    path = tmp_path / "pipeline.yaml"
    compile_pipeline(exp, str(path), platform=platform)
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else None), path


@pytest.fixture
def compile_docs():
    """``compile_docs(exp, tmp_path, platform=True)`` -> (spec dict, platform dict | None, path)."""
    return _compile_docs
