"""Benchmarks: the pure label-efficiency helpers on hand-computed curves, and tiny invocations."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import import_images  # noqa: E402
import label_efficiency as le  # noqa: E402
import s3_download  # noqa: E402
import scale  # noqa: E402
import throughput  # noqa: E402

# b = % of pool labeled, p = metric
B = [10.0, 20.0, 40.0]
P = [20.0, 30.0, 50.0]


def test_auc_whole_curve_is_the_trapezoid_sum():
    # 10 * (20 + 30) / 2 + 20 * (30 + 50) / 2 = 250 + 800
    assert common.auc_at(B, P) == pytest.approx(1050.0)
    assert common.auc_at(B, P, 40.0) == pytest.approx(1050.0)


def test_auc_cut_between_points_interpolates_the_end():
    # up to 30 %: 250 + 10 * (30 + 40) / 2 (p at 30 % is 40)
    assert common.auc_at(B, P, 30.0) == pytest.approx(600.0)
    assert common.auc_at(B, P, 10.0) == pytest.approx(0.0)


def test_auc_and_metric_outside_the_measured_range_are_nan():
    assert math.isnan(common.auc_at(B, P, 50.0))
    assert math.isnan(common.auc_at(B, P, 5.0))
    assert math.isnan(common.metric_at(B, P, 41.0))
    assert math.isnan(common.auc_at([], []))


def test_metric_at_interpolates_between_cycles():
    assert common.metric_at(B, P, 30.0) == pytest.approx(40.0)
    assert common.metric_at(B, P, 20.0) == pytest.approx(30.0)


def test_curve_must_increase():
    with pytest.raises(ValueError):
        common.auc_at([10, 10, 20], [1, 2, 3])
    with pytest.raises(ValueError):
        common.metric_at([10, 20], [1], 15)


def test_labels_to_reach_interpolates_and_says_never():
    assert common.labels_to_reach([10, 20, 30], [20, 30, 50], 40.0) == pytest.approx(25.0)
    assert common.labels_to_reach([10, 20, 30], [20, 30, 50], 15.0) == pytest.approx(10.0)
    assert math.isnan(common.labels_to_reach([10, 20, 30], [20, 30, 50], 60.0))


def test_mean_std_uses_sample_std_and_ignores_nan():
    m, s = common.mean_std([1.0, 3.0, float("nan")])
    assert m == pytest.approx(2.0) and s == pytest.approx(math.sqrt(2.0))
    assert common.mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(x) for x in common.mean_std([]))


def test_label_efficiency_parse_args_checks_sizes_and_smoke_skips_real_frames():
    with pytest.raises(SystemExit):
        le.parse_args(["--pool", "25", "--frames", "10"])  # the redundant pool is whole sequences
    smoke = le.parse_args(["--smoke"])
    assert "traffic-cams" not in smoke.pools and smoke.preset == "tiny" and smoke.name == "label_efficiency_smoke"
    assert le.parse_args([]).seeds == [0, 1, 2, 3, 4]  # the verdict needs 5 paired seeds


def test_boxes_table_is_a_valid_boxes_table():
    from activedet import schema

    table = throughput.boxes_table(50, 3)
    validated, report = schema.validate_boxes(table)
    assert validated.num_rows == 150 and report.clipped == 0
    assert table.column("image_id").to_pylist()[:4] == ["img00000000"] * 3 + ["img00000001"]


def test_throughput_parquet_smoke_writes_results(tmp_path):
    payload = throughput.main(["--smoke", "--only", "parquet", "--out", str(tmp_path), "--name", "tp"])
    data = json.loads((tmp_path / "tp.json").read_text())
    assert data["rows"] == json.loads(json.dumps(payload["rows"], default=str))
    names = [r["name"] for r in data["rows"]]
    assert any("write" in n for n in names) and any("read" in n for n in names)
    assert all(r["value"] > 0 and r["baseline_value"] > 0 for r in data["rows"])
    assert (tmp_path / "tp.csv").read_text().startswith("section,name,value")


def test_import_images_smoke_writes_results(tmp_path):
    payload = import_images.main(["--smoke", "--only", "local", "--out", str(tmp_path), "--name", "ii"])
    names = [r["name"] for r in payload["rows"]]
    assert any("probe headers (" in n for n in names) and any("import_coco" in n for n in names)
    assert all(r["value"] > 0 and r["baseline_value"] > 0 for r in payload["rows"])
    assert (tmp_path / "ii.md").read_text().count("img/s") == len(names)


def test_label_efficiency_smoke_runs_the_products_stage_configs_and_resumes(tmp_path):
    argv = ["--smoke", "--pools", "synth-redundant", "--seeds", "0", "--workers", "1", "--strategies", "random", "auto",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--name", "le"]
    payload = le.main(argv)
    recs = payload["records"]
    assert sorted((r["strategy"], r["cycle"]) for r in recs) == [("auto", 0), ("auto", 1), ("random", 0), ("random", 1)]
    assert {r["labeled"] for r in recs if r["cycle"] == 1} == {12}  # I = B = 25 % of a 24-image pool
    assert [r["auto_choice"] for r in recs if r.get("auto_choice")] in (["unified"], ["random"], ["topk"])
    teacher = payload["stage_timings"]["train-teacher"]
    assert teacher == {**teacher, "runs": 3, "reused": 1}  # the cycle-0 teacher is shared by both strategies
    auc = [r for r in payload["comparisons"] if r["strategy"] == "auto" and r["quantity"] == "auc" and r["metric"] == "AP50"]
    assert len(auc) == 1 and auc[0]["verdict"] == "too few seeds (1 < 5)"
    assert (tmp_path / "le_budget_curve.png").stat().st_size > 0 and (tmp_path / "le_comparisons.csv").exists()
    again = le.main(argv)  # everything is content-addressed: a re-run trains nothing and reports the same
    assert "train-teacher" not in again["stage_timings"] or again["stage_timings"]["train-teacher"]["runs"] == 0
    assert again["records"] == recs


def test_label_efficiency_comparisons_follow_a_hand_computation():
    def curve(seed, strategy, ys):
        return [{"pool": "p", "seed": seed, "strategy": strategy, "cycle": k, "labeled": 10 * (k + 1), "pct": 10.0 * (k + 1),
                 "AP50": y, "AP": y / 2} for k, y in enumerate(ys)]

    records = []
    for seed in range(5):
        records += curve(seed, "random", [10, 20, 30]) + curve(seed, "coreset", [10, 30, 40 + seed])
    rows = {(r["quantity"], r["metric"]): r for r in le.comparisons(records, ["p"], ["random", "coreset"])}
    auc = rows[("auc", "AP50")]  # per seed: (10+30)/2*10 + (30+40+s)/2*10 - 400 = 150 + 5 s
    assert auc["mean"] == pytest.approx(160.0) and auc["low"] > 0 and auc["verdict"] == "holds"
    saved = rows[("labels_saved", "AP50")]  # random's final 30 is reached at 20 labels: 10 saved on every seed
    assert saved["mean"] == pytest.approx(10.0) and saved["verdict"] == "holds"


def test_scale_smoke_runs_every_case_and_resumes(tmp_path):
    argv = ["--smoke", "--in-process", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    payload = scale.main(argv)
    rows = payload["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"bandwidth", "merge-scores", "select-batch", "core-set"}
    for strategy in scale.STRATEGIES:
        assert any(r["name"].startswith(f"select-batch {strategy},") and r["value"] > 0 for r in rows)
    coreset = [r for r in rows if r["section"] == "core-set"]
    assert len(coreset) == 6 and all(r["same_picks_as_plain"] in (None, True) for r in coreset)
    assert payload["machine"]["loadavg_1m"] >= 0 and (tmp_path / "out" / "scale_smoke.md").exists()
    assert (tmp_path / "out" / "scale_smoke.png").stat().st_size > 0
    # a second run finds every case done (cases.jsonl) and reports the same figures
    again = scale.main(argv)
    assert [r["value"] for r in again["rows"]] == [r["value"] for r in rows]


def test_s3_download_smoke_compares_every_method_per_size(tmp_path):
    payload = s3_download.main(["--smoke", "--out", str(tmp_path), "--name", "s3"])
    methods = {r["method"] for r in payload["rows"]}
    assert methods == set(s3_download.METHODS) - {s3_download.BASELINE}
    assert {r["object_mb"] for r in payload["rows"]} == {1, 4}
    assert all(r["value"] > 0 and r["baseline_value"] > 0 for r in payload["rows"])
    assert (tmp_path / "s3.png").stat().st_size > 0


def test_certainty_benchmark_true_iou_is_best_same_class_iou():
    import numpy as np

    import certainty_head
    from activedet import schema

    gt = schema.boxes_from_arrays(["a", "a"], [[0, 0, 10, 10], [20, 0, 30, 10]], [1, 2], source="gt")
    preds = schema.boxes_from_arrays(["a", "a", "b"], [[0, 0, 10, 5], [20, 0, 30, 10], [0, 0, 5, 5]], [1, 1, 1], source="pred")
    # half of GT 1; exactly GT 2 but the wrong class; an image without GT
    np.testing.assert_allclose(certainty_head.true_iou(preds, gt), [0.5, 0.0, 0.0])
    c = certainty_head.correlations(np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.4, 0.9]))
    assert c["spearman"] == pytest.approx(1.0) and c["n"] == 3
    assert certainty_head.correlations(np.ones(3), np.arange(3.0))["pearson"] is None


def test_label_efficiency_skips_recorded_strategies_and_refuses_foreign_records(tmp_path):
    recs = [{"pool": "synth-redundant", "seed": 0, "machine": "cpu-a", "strategy": s, "cycle": c}
            for s in ("random", "entropy") for c in (0, 1)]
    recs = recs[:-1]  # entropy lacks its last cycle: it runs again
    assert le.finished_strategies(recs, "synth-redundant", 0, cycles=2, machine_id="cpu-a") == ["random"]
    assert le.finished_strategies(recs, "synth-redundant", 1, cycles=2, machine_id="cpu-a") == []
    # another CPU trains another cycle-0 teacher: its records are not this machine's pairs
    assert le.finished_strategies(recs, "synth-redundant", 0, cycles=2, machine_id="cpu-b") == []
    args = le.parse_args(["--smoke"])
    committed = tmp_path / "le.json"
    committed.write_text(json.dumps({"settings": {**le.settings_of(args), "teacher_iters": 99}, "records": recs,
                                     "command": "label_efficiency.py --smoke"}))
    with pytest.raises(SystemExit, match="teacher_iters"):
        le.imported_payload(committed, args)
    committed.write_text(json.dumps({"settings": le.settings_of(args), "records": recs, "command": "x"}))
    assert le.imported_payload(committed, args)["records"] == recs


def test_label_efficiency_compares_only_what_ran_on_each_pool():
    def curve(pool, strategy, seed, ap50):
        return [{"pool": pool, "seed": seed, "strategy": strategy, "cycle": c, "labeled": 10 * (c + 1), "pct": 2.0 * (c + 1),
                 "AP50": v, "AP": v / 2} for c, v in enumerate(ap50)]

    records = []
    for seed in range(5):
        records += curve("a", "random", seed, [40, 42, 44]) + curve("a", "entropy", seed, [40, 45 + seed, 50])
        records += curve("a", "auto", seed, [40, 42, 44]) + curve("b", "random", seed, [40, 41, 42])
    rows = le.comparisons(records, ["a", "b"], ["random", "entropy", "auto"])
    assert {(r["pool"], r["strategy"]) for r in rows} == {("a", "entropy"), ("a", "auto")}  # nothing ran on b but random
    check = le.best_fixed_check(rows, ["a", "b"], records)
    assert [c["pool"] for c in check] == ["a"] and check[0]["best_fixed"] == "entropy"
    assert check[0]["auto_within_best"] is False and check[0]["high"] < 0  # auto = random, entropy better on every seed


def test_every_auto_arm_is_checked_against_the_best_fixed_strategy_and_none_counts_as_one():
    def curve(strategy, seed, ap50):
        return [{"pool": "a", "seed": seed, "strategy": strategy, "cycle": c, "labeled": 10 * (c + 1), "pct": 2.0 * (c + 1),
                 "AP50": v, "AP": v / 2} for c, v in enumerate(ap50)]

    records = []
    for seed in range(5):  # auto-table6 is the best curve, yet only entropy may be the best *fixed* strategy
        records += curve("random", seed, [40, 42, 44]) + curve("entropy", seed, [40, 45, 48 + seed])
        records += curve("auto", seed, [40, 45, 48 + seed]) + curve("auto-table6", seed, [40, 50, 60])
    rows = le.comparisons(records, ["a"], ["random", "entropy", "auto", "auto-table6"])
    check = {c["arm"]: c for c in le.best_fixed_check(rows, ["a"], records)}
    assert set(check) == {"auto", "auto-table6"} and {c["best_fixed"] for c in check.values()} == {"entropy"}
    assert check["auto"]["auto_minus_best"] == 0 and check["auto-table6"]["low"] > 0


def test_label_efficiency_pairs_curves_only_on_the_same_machine():
    def curve(strategy, machine, ap50s):
        return [{"pool": "p", "seed": 0, "machine": machine, "strategy": strategy, "cycle": c, "labeled": 10 * (c + 1),
                 "pct": 2.0 * (c + 1), **{m: v for m in le.METRICS}} for c, v in enumerate(ap50s)]

    recs = curve("random", "cpu-a", [40, 50]) + curve("entropy", "cpu-a", [40, 60]) + curve("auto", "cpu-b", [41, 55])
    rows = {(r["strategy"], r["quantity"]): r for r in le.comparisons(recs, ["p"], ["random", "entropy", "auto"])
            if r["metric"] == "AP50"}
    assert rows[("entropy", "final")]["mean"] == 10 and rows[("entropy", "final")]["seeds"] == 1
    assert ("auto", "final") not in rows  # no random run on cpu-b: nothing to pair with
    assert le.cycle0_spread(recs) == 0.0  # 40 vs 41 are different machines' teachers, not a reproduction failure


def test_label_efficiency_tells_apart_cpus_that_share_a_model_name():
    zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
    zen4 = zen3.replace("cpu family\t: 25\nmodel\t\t: 1", "cpu family\t: 25\nmodel\t\t: 17")
    assert le.machine_id(zen3, "AVX2") == "AMD EPYC (family 25 model 1 stepping 1, AVX2)"
    # a hypervisor names both hosts "AMD EPYC": the tag still differs, so their curves never pair
    assert le.machine_id(zen4, "AVX2") != le.machine_id(zen3, "AVX2")
    assert le.machine_id(zen3, "AVX512") != le.machine_id(zen3, "AVX2")
    assert le.machine_id("", "") == "unknown"


def test_label_efficiency_stops_a_job_whose_cycle0_teacher_differs_from_the_records_of_its_tag():
    recs = [{"pool": "p", "seed": 0, "machine": "cpu-a", "strategy": s, "cycle": c, "AP50": ap}
            for s, ap in (("random+ssl", 12.0), ("random", 57.65)) for c in (0, 1)]
    assert le.recorded_cycle0(recs, "p", 0, "cpu-a") == 57.65  # the student's cycle-0 figure is another model's
    assert le.recorded_cycle0(recs, "p", 0, "cpu-b") is None and le.recorded_cycle0(recs, "p", 1, "cpu-a") is None
    job = le.Job(pool="p", seed=0, base={}, work="w", strategies=[], machine="cpu-a", cycle0_ap50=57.65)
    job.check_cycle0(57.65)  # reproduced: fine
    with pytest.raises(RuntimeError, match="cycle-0 teacher gives AP50 60.1000 here but 57.6500"):
        job.check_cycle0(60.1)
    first = le.Job(pool="p", seed=0, base={}, work="w", strategies=[], machine="cpu-c")
    first.check_cycle0(60.1)  # nothing recorded yet: the first arm sets what the later arms of the job must reproduce
    with pytest.raises(RuntimeError):
        first.check_cycle0(60.2)


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_label_efficiency_killed_with_sigterm_takes_its_workers_with_it(tmp_path):
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, str(Path(le.__file__)), "--smoke", "--pools", "synth-redundant", "synth-diverse",
                             "--strategies", "random", "--workers", "2", "--work", str(tmp_path / "work"),
                             "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: set[int] = set()
    deadline = time.monotonic() + 300
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = {c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text(errors="ignore")}
        time.sleep(0.2)
    assert len(workers) == 2, proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() and "spawn_main" in Path(f"/proc/{w}/cmdline").read_text(errors="ignore")
              for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and "spawn_main" in Path(f"/proc/{w}/cmdline").read_text(errors="ignore")]
    assert not alive  # before: the workers ran on, orphaned, appending records
    assert proc.returncode != 0 and not (tmp_path / "out").exists()
