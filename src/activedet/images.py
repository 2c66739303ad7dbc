"""Container images for pipeline stages: the one place image names and tags are decided.

Tags follow the package version, so a pipeline compiled by activedet X.Y.Z runs on images built
from the same X.Y.Z wheel (``make images`` reads the same values). The registry prefix comes from
``ACTIVEDET_IMAGE_REGISTRY`` (or the experiment config, which passes it explicitly).
"""

from __future__ import annotations

import os

from activedet import __version__

DEFAULT_REGISTRY = "ghcr.io/activedet"
GPU_IMAGE_NAME = "activedet-gpu"
CPU_IMAGE_NAME = "activedet-cpu"


def image_tag() -> str:
    return __version__


def gpu_image(registry: str | None = None) -> str:
    """Image for training and scoring stages (CUDA torch + the package)."""
    reg = (registry or os.environ.get("ACTIVEDET_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"{reg}/{GPU_IMAGE_NAME}:{image_tag()}"


GPU_D2_IMAGE_NAME = "activedet-gpu-d2"


def gpu_d2_image(registry: str | None = None) -> str:
    """The GPU image plus detectron2 built with CUDA (images/gpu-d2): model stages of ``d2_*`` presets."""
    reg = (registry or os.environ.get("ACTIVEDET_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"{reg}/{GPU_D2_IMAGE_NAME}:{image_tag()}"


def model_image(preset: str, registry: str | None = None) -> str:
    """The image of the stages that run ``preset``'s detector: the detectron2 variant for its presets."""
    from activedet.models.backend import DETECTRON2, backend_name

    return gpu_d2_image(registry) if backend_name(preset) == DETECTRON2 else gpu_image(registry)


def cpu_image(registry: str | None = None) -> str:
    """Slim image for selection, evaluation and bookkeeping stages."""
    reg = (registry or os.environ.get("ACTIVEDET_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"{reg}/{CPU_IMAGE_NAME}:{image_tag()}"


MLFLOW_IMAGE_NAME = "activedet-mlflow"


def mlflow_image(registry: str | None = None) -> str:
    """MLflow tracking server of the chart (images/mlflow: pinned MLflow + psycopg2 + boto3)."""
    reg = (registry or os.environ.get("ACTIVEDET_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"{reg}/{MLFLOW_IMAGE_NAME}:{image_tag()}"
