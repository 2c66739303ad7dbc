"""The ``activedet`` command: help on every group, exit code 2 with one stderr line on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from activedet.cli import main as cli_main
from activedet.cli.main import GROUPS, build_parser, main

ACTIVEDET = Path(sys.executable).parent / "activedet"


def _registered_groups() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help / usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    assert "usage: activedet" in out
    for group in _registered_groups():
        assert group in out


COMMANDS = sorted(_registered_groups())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0
    assert f"activedet {command}" in out


def test_every_group_module_registers_commands():
    import argparse
    import importlib

    for group in GROUPS:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"activedet.cli.{group}").register(sub)
        assert sub.choices, f"activedet.cli.{group} registers no command"


def test_core_groups_registered():
    assert {"stage", "schedule"} <= _registered_groups()


def test_no_command_is_usage_error(capsys):
    code, _, err = _run([], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_unknown_stage_exit_2_one_line(capsys):
    code, out, err = _run(["stage", "no-such-stage"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no-such-stage" in lines[0]
    assert "Traceback" not in err and out == ""


def test_missing_config_file_exit_2_one_line(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    code, _, err = _run(["stage", "ingest", "--config", str(missing)], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"activedet: error: config file not found: {missing}"]


def test_bad_config_key_exit_2_lists_valid_keys(capsys, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("source_uri: /tmp/x\ndataset_uri: /tmp/d\nout_dataset_uri: /tmp/o\nbogus_key: 1\n")
    code, _, err = _run(["stage", "ingest", "--config", str(cfg)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "stage ingest: unknown key 'bogus_key'" in lines[0] and "valid keys:" in lines[0]


def test_bad_yaml_exit_2(capsys, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("a: [unclosed\n")
    code, _, err = _run(["stage", "ingest", "--config", str(cfg)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "invalid YAML" in err


def test_debug_flag_shows_traceback(tmp_path):
    from activedet.errors import ConfigError

    with pytest.raises(ConfigError):
        cli_main.main(["--debug", "stage", "ingest", "--config", str(tmp_path / "nope.yaml")])


def test_installed_entry_point_smoke(tmp_path):
    """The console script the package installs: help works, bad input exits 2 with one line."""
    assert ACTIVEDET.exists(), f"{ACTIVEDET} not installed"
    ok = subprocess.run([str(ACTIVEDET), "--version"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("activedet ")
    bad = subprocess.run(
        [str(ACTIVEDET), "stage", "ingest", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "config file not found" in bad.stderr
    assert "Traceback" not in bad.stderr
