"""benchmarks/ddp.py: the cases compared and the rendering of a results payload (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ddp  # noqa: E402


def test_cases_keep_the_global_batch():
    for device in ("cpu", "cuda"):
        cases = ddp.cases(4, device)
        assert {c["devices"] * c["per_rank_batch"] for c in cases} == {4}
        assert any(c["devices"] == 2 for c in cases) and any(c["devices"] == 1 for c in cases)


def test_render_writes_table_and_png(tmp_path):
    rows = [dict(c, images_per_s_all=[5.0, 6.0], images_per_s=6.0, vs_1_thread=1.0 if i == 0 else 1.5, wall_s=10.0,
                 loadavg_1m=1.2) for i, c in enumerate(ddp.cases(4, "cpu"))]
    payload = {"command": "benchmarks/ddp.py", "machine": {"cpus": 2}, "rows": rows,
               "settings": {"device": "cpu", "height": 64, "width": 128, "batch": 4, "iterations": 40, "repeats": 2}}
    table = ddp.render(payload, tmp_path)
    assert "2 ranks x 1 thread (gloo DDP)" in table and "5.0 / 6.0" in table
    assert (tmp_path / "ddp.png").stat().st_size > 0
    assert "global batch 4" in (tmp_path / "ddp.md").read_text()
