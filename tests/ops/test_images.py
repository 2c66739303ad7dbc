"""Static checks of the container images (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from activedet import images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": ROOT / "images/gpu/Dockerfile", "cpu": ROOT / "images/cpu/Dockerfile"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_dockerfile_pinned_nonroot_installs_wheel(kind):
    ins = _instructions(DOCKERFILES[kind])
    froms = [arg for op, arg in ins if op == "FROM"]
    assert len(froms) == 1
    image = froms[0].split()[0]
    name, _, tag = image.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"base {image} is not pinned to an exact tag"
    users = [arg for op, arg in ins if op == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ins[-1][0] in ("CMD", "ENTRYPOINT") and all(op != "USER" for op, _ in ins[ins.index(("USER", users[-1])) + 1 :])
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    assert "activedet-*.whl" in runs and any(op == "COPY" and "*.whl" in arg for op, arg in ins)
    if kind == "cpu":
        assert "whl/cpu" in " ".join(a for _, a in ins)


def _requirement(runs: str, name: str) -> str:
    match = re.search(rf'"{name}([<>=!~][^"]*)"', runs)
    assert match, f"{name} is not installed with a quoted version range"
    return match.group(1)


def test_gpu_image_one_torch_source_no_duplicate_cuda():
    """Issue 19: torch from the index the tests use (its wheels bundle CUDA 13), on a base without CUDA."""
    import torch
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    ins = _instructions(DOCKERFILES["gpu"])
    text = " ".join(arg for _, arg in ins)
    image = next(arg for op, arg in ins if op == "FROM").split()[0]
    assert not re.search(r"nvidia/cuda|cudnn", image), f"{image} duplicates the CUDA libraries the torch wheel bundles"
    assert "--index-url" not in text and "--extra-index-url" not in text and "download.pytorch.org" not in text
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    from importlib.metadata import version

    tested = version("torch")  # the distribution's version: a PyTorch-index build would carry +cuXXX here
    assert "+" not in tested, f"the tests ran torch {tested} from another index; the image installs the registry's"
    assert Version(tested) in SpecifierSet(_requirement(runs, "torch"))
    cuda_major = (torch.version.cuda or "").split(".")[0]
    assert cuda_major and f"CUDA {cuda_major}" in DOCKERFILES["gpu"].read_text(), "the image's notes name another CUDA"


def test_mlflow_image_pins_server_with_drivers():
    """Issue 19: the chart's MLflow image has psycopg2 (postgresql://) and boto3 (s3://), one pinned MLflow."""
    import mlflow

    text = (ROOT / "images/mlflow/Dockerfile").read_text()
    version = re.search(r"^ARG MLFLOW_VERSION=(\S+)$", text, re.M).group(1)
    assert re.search(r"^ARG PSYCOPG2_VERSION=\d", text, re.M) and re.search(r"^ARG BOTO3_VERSION=\d", text, re.M)
    runs = " ".join(arg for op, arg in _instructions(ROOT / "images/mlflow/Dockerfile") if op == "RUN")
    for pkg in ("mlflow==${MLFLOW_VERSION}", "psycopg2-binary==${PSYCOPG2_VERSION}", "boto3==${BOTO3_VERSION}"):
        assert pkg in runs
    dev = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    assert f'"mlflow=={version}"' in dev, "the dev extra must pin the MLflow the image ships (the chart's args are tested with it)"
    assert mlflow.__version__ == version, f"installed mlflow {mlflow.__version__}, image pins {version}: reinstall with make"


def test_make_images_uses_activedet_images_tags():
    out = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"-t {images.gpu_image()} " in out and f"-t {images.cpu_image()} " in out
    assert f"-f images/mlflow/Dockerfile -t {images.mlflow_image()} images/mlflow" in out
    assert "pip wheel" in out.split("docker build")[0]  # the wheel is built before the images
    assert "images/gpu/Dockerfile" in out and "images/cpu/Dockerfile" in out


def test_components_use_the_same_images():
    from activedet.ops.pipeline import make_ops_components
    from activedet.pipeline.components import make_components

    comps = vars(make_components())
    bases = {c.component_spec.implementation.container.image for c in comps.values()}
    bases |= {c.component_spec.implementation.container.image for c in vars(make_ops_components()).values()}
    assert bases == {images.gpu_image(), images.cpu_image()}
    assert images.image_tag() in images.gpu_image()


def test_cluster_docs_state_kfp_backend_and_argo_minimums():
    """Issue 19 (8): dsl.Collected needs a recent backend and set_retry misses preemption; say so."""
    text = (ROOT / "docs/cluster.md").read_text()
    assert "Kubeflow Pipelines 2.x installed" not in text
    assert "backend 2.5 or newer" in text and "dsl.Collected" in text
    assert "retryPolicy" in text and "preempt" in text and "ParallelFor" in text
    assert "driver >= 580" in text  # the CUDA 13 wheels the GPU image installs
