"""Run summaries: the table and the plots, read back from a run's store layout."""

from __future__ import annotations

import pytest

from activedet import store
from activedet.pipeline import report
from activedet.pipeline.layout import RunLayout
from activedet.pipeline.plan import load_experiment
from activedet.pipeline.steps import flatten_numbers

ROWS = [
    {"cycle": 0, "labeled": 40, "AP": 0.1234, "AP50": 0.3, "pseudo_labels": 120, "strategy": "random (initial)"},
    {"cycle": 1, "labeled": 80, "AP": 0.2, "AP50": 0.45, "pseudo_labels": None, "strategy": "topk"},
]


def test_table_has_one_line_per_cycle_and_the_agreed_columns():
    lines = report.format_table(ROWS).splitlines()
    assert lines[0].split() == ["cycle", "labeled", "AP", "AP50", "pseudo-labels", "strategy"]
    assert lines[2].split()[:5] == ["0", "40", "0.123", "0.300", "120"]
    assert lines[3].split()[4] == "-"  # missing value shown as '-'
    assert len(lines) == 2 + len(ROWS)


def test_rows_are_read_in_cycle_order_and_plots_are_written(tmp_path):
    exp = load_experiment({"dataset": {"uri": "s3://b/d"}, "initial_size": 40, "budget": 40, "cycles": 12})
    lay = RunLayout(str(tmp_path / "run"), exp)
    for cycle in (10, 2, 0):  # 'cycle-10' sorts before 'cycle-2' as text
        store.write_json(lay.summary_row(cycle), {"cycle": cycle, "labeled": 40 * (cycle + 1), "AP": 0.1})
    store.write_json(store.join(lay.summary_dir, "summary.json"), {"not": "a row"})
    assert [r["cycle"] for r in report.read_rows(lay)] == [0, 2, 10]
    png = report.plot_budget_curve(ROWS, tmp_path / "curve.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_flatten_numbers_keeps_numeric_leaves_only():
    out = flatten_numbers({"a": 1, "b": {"c": 2.5, "d": "x", "e": True, "f": float("nan")}, "g": [1, 2]})
    assert out == {"a": 1.0, "b.c": 2.5}


def test_local_run_output_shows_progress_and_logs_everything(tmp_path):
    import io

    from activedet.pipeline.local import _PipelineOutput

    log, terminal = io.StringIO(), io.StringIO()
    out = _PipelineOutput(log, terminal, verbose=False)
    out.write('    [KFP Executor 2026-11-21 17:50:24,342 INFO]: Got executor_input:\n    {\n        "inputs": {}\n')
    out.write("    [KFP Executor 2026-11-21 17:50:39,461 INFO]: ▶ cycle 1/3 train-teacher: started\n")
    out.write("    [KFP Executor 2026-11-21 17:50:40,000 INFO]: train-teacher: 20/200 it  1.2 it/s  ETA 02:30\nTraceback (most")
    out.write(" recent call last):\n")
    assert terminal.getvalue().splitlines() == [  # a task's traceback stays in the log (issue 13)
        "17:50:39 ▶ cycle 1/3 train-teacher: started",
        "17:50:40 train-teacher: 20/200 it  1.2 it/s  ETA 02:30",
    ]
    assert "executor_input" in log.getvalue() and '"inputs"' in log.getvalue()
    assert "Traceback (most recent call last):" in log.getvalue()
    assert list(out.tail)[-1] == "Traceback (most recent call last):"  # kept for the one-line failure summary


def test_label_efficiency_against_a_hand_computation():
    import math

    from activedet.pipeline.report import label_efficiency

    rows = [  # pool of 100: 10, 20, 30 % labeled
        {"cycle": 0, "labeled": 10, "unlabeled": 90, "AP": 0.20, "AP50": 0.40},
        {"cycle": 1, "labeled": 20, "unlabeled": 80, "AP": 0.30, "AP50": 0.50},
        {"cycle": 2, "labeled": 30, "unlabeled": 70, "AP": 0.34, "AP50": 0.56},
    ]
    le = label_efficiency(rows, target=0.32)
    assert le["budget_pct_final"] == 30.0 and le["labeled_final"] == 30
    assert le["auc.AP"] == pytest.approx(10 * (0.20 + 0.30) / 2 + 10 * (0.30 + 0.34) / 2)  # 5.7
    assert le["auc_at_20pct.AP50"] == pytest.approx(10 * (0.40 + 0.50) / 2)
    assert le["metric_at_20pct.AP"] == pytest.approx(0.30)
    assert le["labels_to_reach.AP"] == pytest.approx(25.0)  # halfway between 0.30 (20) and 0.34 (30)
    assert math.isnan(label_efficiency(rows, target=0.9)["labels_to_reach.AP"])
    # configured budgets: interpolated inside the curve, NaN outside it (never extrapolated)
    at = label_efficiency(rows, budgets=[15.0, 25.0, 50.0])
    assert at["metric_at_15pct.AP"] == pytest.approx(0.25) and at["metric_at_25pct.AP50"] == pytest.approx(0.53)
    assert at["auc_at_15pct.AP"] == pytest.approx(5 * (0.20 + 0.25) / 2)
    assert math.isnan(at["metric_at_50pct.AP"]) and "metric_at_20pct.AP" not in at
