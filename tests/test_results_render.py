"""Results pages are rendered from the committed files, and claims are decided by their intervals."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from activedet.al.budget import MIN_PAIRS, auc_at, labels_to_reach, metric_at, paired_bootstrap, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_results_page_match_the_results_files():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_results.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_budget_metrics_on_a_hand_computed_curve():
    budgets, ap = [10, 20, 30, 40], [20.0, 30.0, 34.0, 36.0]
    # trapezoids: 10*(20+30)/2 + 10*(30+34)/2 + 10*(34+36)/2 = 250 + 320 + 350
    assert auc_at(budgets, ap) == pytest.approx(920.0)
    assert auc_at(budgets, ap, upto=25) == pytest.approx(250 + 5 * (30 + 32) / 2)
    assert metric_at(budgets, ap, 35) == pytest.approx(35.0)
    assert math.isnan(metric_at(budgets, ap, 50))
    assert labels_to_reach([12, 24, 36, 48], ap, 32.0) == pytest.approx(30.0)
    assert math.isnan(labels_to_reach([12, 24, 36, 48], ap, 40.0))


def test_paired_bootstrap_interval_and_verdicts():
    mean, lo, hi = paired_bootstrap([1.0, 2.0, 3.0, 2.5, 1.5, 2.0])
    assert mean == pytest.approx(2.0) and 1.0 < lo < mean < hi < 3.0
    assert verdict(lo, hi, 6) == "holds"
    _, lo, hi = paired_bootstrap([-1.0, 2.0, -0.5, 1.5, 0.2])
    assert lo < 0 < hi and verdict(lo, hi, 5) == "undecided"
    assert verdict(-3.0, -1.0, 5) == "reversed"
    assert verdict(1.0, 2.0, MIN_PAIRS - 1).startswith("too few seeds")  # a 3-seed bootstrap settles nothing
    assert all(math.isnan(x) for x in paired_bootstrap([]))


def test_results_name_the_strategies_a_pool_has_not_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_results

    records = [{"pool": "synth-diverse", "strategy": s} for s in ("random", "entropy", "auto", "auto-table6")]
    le = {"settings": {"pools": ["synth-diverse"]}, "records": records}
    missing = render_results._not_run(le)["synth-diverse"]
    assert missing == ["random+ssl", "inconsistency", "unified", "coreset", "coreset+ssl", "unified+ssl"]  # ablations not owed
    le["records"] += [{"pool": "synth-diverse", "strategy": s} for s in missing]
    assert render_results._not_run(le) == {}


def test_label_efficiency_settings_name_every_processor_the_pairs_come_from():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_results

    records = [{"machine": "AMD EPYC"}, {"machine": "AMD EPYC (family 25 model 1 stepping 1, AVX2)"}, {"machine": "AMD EPYC"}, {}]
    text = render_results._le_machines({"records": records})
    assert "come from 3: `AMD EPYC`; `AMD EPYC (family 25 model 1 stepping 1, AVX2)`; `untagged`." in text
