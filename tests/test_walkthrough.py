"""The README's own-data walkthrough, run command by command exactly as written.

The commands come from the README between the ``walkthrough`` markers, so the documentation
cannot drift from what works. They run in a scratch checkout layout (``<tmp>/main`` as the
working directory, ``<tmp>/shared`` linked to the real shared folder) so that
``../shared/datasets/traffic-cams`` resolves as it does for a user in the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SHARED = (ROOT.parent / "shared", Path("/work/shared"))
ACTIVEDET = Path(sys.executable).parent / "activedet"


def readme_commands(block: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {block}:begin -->\s*```bash\n(.*?)```\s*<!-- {block}:end -->", text, re.S)
    assert m, f"README has no {block} block"
    return [line.split("  #")[0].strip() for line in m.group(1).splitlines() if line.startswith("activedet ")]


@pytest.fixture
def workdir(tmp_path) -> Path:
    shared = next((s for s in _SHARED if (s / "datasets" / "traffic-cams" / "data.yaml").is_file()), None)
    if shared is None:
        pytest.skip("../shared/datasets/traffic-cams not found")
    (tmp_path / "shared").symlink_to(shared)
    (tmp_path / "main").mkdir()
    return tmp_path / "main"


def _run(command: str, cwd: Path) -> str:
    argv = shlex.split(command)
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ACTIVEDET), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _check_run(out: str, run_dir: Path) -> None:
    assert "finished" in out and "budget curve:" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert (run_dir / "store" / "summary" / "budget_curve.png").is_file()
    assert (run_dir / "mlflow.db").is_file()
    assert (run_dir / "mlartifacts").is_dir()  # MLflow artifacts beside the database ...
    assert not (run_dir.parents[1] / "mlruns").exists()  # ... not in the user's working directory


@pytest.mark.slow
def test_readme_walkthrough_yolo(workdir):
    outputs = [_run(c, workdir) for c in readme_commands("walkthrough")]
    assert "split data/cams by" in outputs[1] and "val" in outputs[1]
    _check_run(outputs[-1], workdir / "runs" / "cams")


@pytest.mark.slow
def test_readme_walkthrough_coco_export(workdir):
    _run(readme_commands("walkthrough")[0], workdir)  # the YOLO import the COCO export is made from
    outputs = [_run(c, workdir) for c in readme_commands("walkthrough-coco")]
    _check_run(outputs[-1], workdir / "runs" / "cams-coco")
