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
    assert ("cu" in runs or "cuda" in image) if kind == "gpu" else "whl/cpu" in " ".join(a for _, a in ins)


def test_make_images_uses_activedet_images_tags():
    out = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"-t {images.gpu_image()} " in out and f"-t {images.cpu_image()} " in out
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
