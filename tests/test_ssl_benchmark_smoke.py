"""benchmarks/ssl_student.py with the mean-teacher student: a tiny invocation, then a resumed one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import ssl_student  # noqa: E402


def test_ssl_student_benchmark_runs_both_modes_and_resumes(tmp_path, monkeypatch):
    argv = ["ssl_student.py", "--seeds", "0", "--sequences", "6", "--labeled", "4", "--teacher-iters", "3", "--student-iters", "3",
            "--student-warmup", "0", "--filters", "act", "--modes", "offline", "mean_teacher", "--checkpoint-every", "2",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--name", "smoke"]
    monkeypatch.setattr(sys, "argv", argv)
    ssl_student.main()
    first = json.loads((tmp_path / "out" / "smoke.json").read_text())
    models = [r["model"] for r in first["rows"]]
    assert models == ["teacher", "control (labeled only)", "student act", "student mean_teacher"]
    summary = {r["model"]: r for r in first["summary"]}
    assert "AP - control [95% CI]" in summary["student mean_teacher"] and (tmp_path / "out" / "smoke.png").exists()
    # a re-run with the same work dir trains nothing again and reports the same rows
    stamp = (tmp_path / "work" / "s0" / "student-mean_teacher" / "meta.json").stat().st_mtime_ns
    ssl_student.main()
    again = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert again["rows"] == first["rows"]
    assert (tmp_path / "work" / "s0" / "student-mean_teacher" / "meta.json").stat().st_mtime_ns == stamp


def test_command_line_reproduces_the_settings_it_was_rendered_from():
    argv = ["--seeds", "0", "3", "--dataset", "traffic-cams", "--labeled-pct", "5.0", "--preset", "lite0_fpn",
            "--preset-options", '{"native_scale": true}', "--crop-size", "128", "256", "--filters", "act", "dynamic",
            "--work", "/tmp/somewhere"]
    settings = vars(ssl_student.build_parser().parse_args(argv))
    line = ssl_student.command_line(settings)
    assert "--work" not in line  # where a run wrote is not part of what it measured
    import shlex

    again = vars(ssl_student.build_parser().parse_args(shlex.split(line)[1:]))
    assert {k: v for k, v in again.items() if k != "work"} == {k: v for k, v in settings.items() if k != "work"}


def _row(seed, model, ap):
    return {"seed": seed, "model": model, "AP": ap, "AP50": 2 * ap, "pseudo_boxes": None, "precision": None, "recall": None}


def test_combine_merges_added_filters_once_per_seed_and_model():
    first = {"rows": [_row(0, "teacher", 1.0), _row(0, "control (labeled only)", 1.5), _row(0, "student act", 1.2)]}
    more = {"rows": [_row(0, "teacher", 1.0), _row(0, "control (labeled only)", 1.5), _row(0, "student fixed", 1.7)]}
    rows = ssl_student.merge_rows([first, more])
    assert [r["model"] for r in rows] == ["teacher", "control (labeled only)", "student act", "student fixed"]


def test_combine_refuses_to_pair_students_with_a_different_control():
    first = {"rows": [_row(0, "teacher", 1.0), _row(0, "control (labeled only)", 1.5)]}
    other = {"rows": [_row(0, "teacher", 1.0), _row(0, "control (labeled only)", 1.9), _row(0, "student fixed", 1.7)]}
    with pytest.raises(SystemExit, match="control"):
        ssl_student.merge_rows([first, other])


def test_combine_refuses_a_repeated_row_that_differs_in_any_measured_field():
    first = {"rows": [_row(0, "teacher", 1.0)]}
    other = {"rows": [{**_row(0, "teacher", 1.0), "recall": 0.4}]}  # same AP and AP50, another recall
    with pytest.raises(SystemExit, match="recall"):
        ssl_student.merge_rows([first, other])


def test_combined_file_names_every_filter_and_mode_so_its_command_reproduces_it(tmp_path):
    def run(filters, modes, rows):
        path = tmp_path / f"{filters[0]}.json"
        settings = {"seeds": [0], "dataset": "synthdrive", "filters": filters, "modes": modes}
        path.write_text(json.dumps({"settings": settings, "filter_params": {f: {} for f in filters}, "rows": rows,
                                    "seconds": 1.0, "machine": {}}))
        return path

    base = [_row(0, "teacher", 1.0), _row(0, "control (labeled only)", 1.5)]
    first = run(["act"], ["offline", "mean_teacher"], [*base, _row(0, "student act", 1.2)])
    more = run(["fixed"], ["offline"], [*base, _row(0, "student fixed", 1.7)])
    ssl_student.combine([first, more], tmp_path / "out", "merged")
    merged = json.loads((tmp_path / "out" / "merged.json").read_text())
    assert merged["settings"]["filters"] == ["act", "fixed"]
    assert merged["settings"]["modes"] == ["offline", "mean_teacher"]
    assert set(merged["filter_params"]) == {"act", "fixed"}
    assert "--filters act fixed" in ssl_student.command_line(merged["settings"])
