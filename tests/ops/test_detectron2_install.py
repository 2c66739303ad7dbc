"""make's install stamp adds the vendored detectron2 wheel when there is one (CI has ../shared/vendor/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(vendor: Path) -> str:
    return subprocess.run(["make", "-n", "-W", "pyproject.toml", ".venv/.installed-stamp", f"VENDOR_DIR={vendor}"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_stamp_installs_the_vendored_wheel_only_when_present(tmp_path):
    wheel = tmp_path / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    with_wheel = _dry_run(tmp_path)
    assert f"pip install --quiet {wheel} 'setuptools<80'" in with_wheel
    assert with_wheel.index("-e '.[dev]'") < with_wheel.index(str(wheel))  # after the package, before the stamp
    empty = tmp_path / "empty"
    empty.mkdir()
    without = _dry_run(empty)
    assert "detectron2-0.6" not in without and "-e '.[dev]'" in without


def test_detectron2_extra_and_its_install_docs():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'detectron2 = ["setuptools<80"]' in pyproject
    docs = (ROOT / "docs" / "backends.md").read_text()
    assert "pip install 'activedet[detectron2]'" in docs and "github.com/facebookresearch/detectron2" in docs
