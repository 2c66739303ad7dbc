"""benchmarks/backends.py: the summary and the rendered table follow the runs (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_summary_and_render_follow_the_runs():
    import backends

    runs = [{"model": m, "iterations": 20, "AP": ap, "AP50": ap50, "final_loss": loss, "train_s": 10.0}
            for m, ap, ap50, loss in [("torchvision R50-FPN", 0.01, 0.02, 1.0), ("torchvision R50-FPN", 0.03, 0.04, 1.2),
                                      ("detectron2 R50-FPN", 0.0, None, 2.0)]]
    steps = {"torchvision R50-FPN": {"median_s": 1.5}, "detectron2 R50-FPN": {"median_s": 1.25}}
    rows = backends.summarise(runs, steps)
    tv, d2 = rows
    assert (tv["seeds"], tv["AP"], tv["AP50"], tv["step_s"]) == (2, 2.0, 3.0, 1.5)
    assert (d2["seeds"], d2["AP"], d2["AP50"], d2["preset"]) == (1, 0.0, 0.0, "d2_faster_rcnn_R_50_FPN")
    payload = {"settings": {"sequences": 16, "frames": 5, "min_size": 128, "batch_size": 2, "lr": 0.01, "iterations": 20,
                            "seeds": [0, 1], "device": "cpu", "rounds": 3}, "loadavg_1m_at_start": 2.0, "summary": rows}
    text = backends.render(payload)
    assert "torchvision R50-FPN" in text and "d2_faster_rcnn_R_50_FPN" in text
    assert "1.500 s" in text and "1.250 s" in text and "2.00+-1.41" in text
