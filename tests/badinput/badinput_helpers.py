"""Helpers for the bad-input suite: run the CLI in-process and prove nothing was touched.

Every case in ``tests/badinput`` asserts the same contract (DEVELOPERS.md, issue 11): exit code 2,
exactly one line on stderr that names the culprit, and every watched location byte-identical to
before (nothing added, nothing removed, nothing changed).
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path


def snapshot(*paths: str | Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (``None``) under ``paths``, keyed by absolute path.

    A path that does not exist is recorded as absent, so creating it later shows up as a change.
    """
    out: dict[str, bytes | None] = {}
    for p in map(Path, paths):
        if not p.exists():
            out[f"absent:{p}"] = None
            continue
        if p.is_file():
            out[str(p)] = p.read_bytes()
            continue
        out[str(p)] = None
        for child in sorted(p.rglob("*")):
            out[str(child)] = child.read_bytes() if child.is_file() else None
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``activedet -q ARGV`` in-process; returns (exit code, stdout, stderr)."""
    from activedet.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["-q", *map(str, argv)])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def assert_bad_input(argv: list, culprit: str, *watched: str | Path) -> str:
    """Run the CLI and assert the bad-input contract; returns the error line.

    Args:
        argv: the command line after ``activedet``.
        culprit: a substring the one stderr line must contain (file, row, key or prefix).
        watched: paths that must be exactly as before (byte-identical, nothing added or removed).
    """
    before = snapshot(*watched)
    code, _, err = run_cli(argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("activedet: error: "), lines[0]
    assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    after = snapshot(*watched)
    changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
    assert not changed, f"watched locations changed: {changed[:5]}"
    return lines[0]


def make_readonly(path: Path) -> None:
    os.chmod(path, 0o555)
