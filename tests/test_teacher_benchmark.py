"""benchmarks/teacher.py's summary and verdicts on hand-made runs (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import teacher  # noqa: E402


def _run(dataset, model, seed, ap):
    return {"dataset": dataset, "model": model, "seed": seed, "AP": ap, "AP50": 2 * ap, "train_s": 90.0, "iterations": 100,
            "per_class_AP": {"car": ap, "bus": None}}


def test_verdicts_need_a_clear_gain_and_a_model_that_learned():
    runs = [_run("synthdrive", m, s, ap + 0.01 * s) for s in range(3)
            for m, ap in (("tiny-scratch", 0.05), ("lite0-scratch", 0.0), ("lite0-imagenet", 0.10))]
    runs += [_run("traffic-cams", m, s, ap) for s in range(3)
             for m, ap in (("tiny-scratch", 0.001), ("lite0-scratch", 0.0), ("lite0-imagenet", 0.004))]
    rows = teacher.summarise(runs)
    by = {(r["dataset"], r["model"]): r for r in rows}
    assert by["synthdrive", "lite0-imagenet"]["AP"] == 0.11 and by["synthdrive", "tiny-scratch"]["AP_std"] == 0.01
    assert by["synthdrive", "tiny-scratch"]["AP[bus]"] is None  # a class without val boxes stays empty
    v = teacher.verdicts(rows)
    assert v["synthdrive"]["beats_tiny"] is True and v["synthdrive"]["AP_gain"] == 0.05
    assert v["traffic-cams"]["learned"] is False and v["traffic-cams"]["beats_tiny"] is False
    payload = {"summary": rows, "verdicts": v, "budget_s": {"synthdrive": 90.0}, "seeds": [0, 1, 2],
               "loadavg_range": [1.0, 2.0], "machine": {"torch_threads": 1}}
    text = teacher.render(payload, compact=True)
    assert "beats tiny beyond one std" in text and "no verdict" in text and "Per-class" not in text
    assert "Per-class AP, synthdrive" in teacher.render(payload)


def test_readme_block_is_replaced_in_place(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# B\n\nintro\n")
    teacher.write_readme_block("first\n", readme)
    teacher.write_readme_block("second\n", readme)
    body = readme.read_text()
    assert body.count(teacher.BEGIN) == 1 and "second" in body and "first" not in body and body.startswith("# B\n\nintro")
