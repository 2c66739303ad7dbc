"""Run the pipeline on this machine: the same pipeline function, executed by ``kfp.local``.

Embedded defaults: a run directory (``runs/<name>-<time>/`` unless given) holds the artifact
store (``store/``), KFP's pipeline root (``kfp/``) and MLflow on sqlite (``mlflow.db``) unless
the experiment (or ``MLFLOW_TRACKING_URI``) names a tracking server.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from activedet import store
from activedet.errors import ActivedetError
from activedet.pipeline import report
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

#: Lines of the pipeline's output worth showing; the rest (kfp.local's executor-input dumps and
#: component loading chatter) goes only to ``<run dir>/pipeline.log``.
_SHOW = re.compile(r"▶|✔|■|ETA|WARNING")
_EXECUTOR_PREFIX = re.compile(r"^\s*\[KFP Executor (\d{4}-\d\d-\d\d )?(?P<time>[\d:]+),\d+ (?P<level>\w+)\]: ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILED_TASK = re.compile(r"Inner task failed: '([^']+)'")
_TASK_FAILURE = re.compile(r"Task '([^']+)' finished with status FAILURE")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(?P<type>[A-Za-z_]\w*(?:Error|Exception|Interrupt)): (?P<msg>.+)$")


def failure_summary(lines: list[str], message: str) -> tuple[str, str]:
    """(failing task, its one-line error) from the tail of kfp.local's output.

    The task is the innermost one kfp.local names; the error is the last exception line of the
    task's traceback (activedet's errors are already one actionable line; any other exception is
    a bug and is labelled with its type).
    """
    plain = [_ANSI.sub("", line) for line in lines]
    m = _FAILED_TASK.search(_ANSI.sub("", message))
    task = m.group(1) if m else next((t.group(1) for line in reversed(plain) if (t := _TASK_FAILURE.search(line))), "a task")
    for line in reversed(plain):
        text = _EXECUTOR_PREFIX.sub("", line).strip()
        e = _EXCEPTION.match(text)
        if e and "finished with status" not in text:
            kind, msg = e.group("type"), e.group("msg").strip()
            known = kind.endswith("Error") and any(kind == c.__name__ for c in _activedet_errors())
            return task, msg if known else f"{kind}: {msg}"
    return task, "no error message in its output"


def _activedet_errors() -> list[type]:
    out, todo = [], [ActivedetError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


class _PipelineOutput(io.TextIOBase):
    """Tees kfp.local's output: everything to the log file, the readable lines to the terminal."""

    def __init__(self, log_file, terminal, *, verbose: bool):
        self.log_file, self.terminal, self.verbose = log_file, terminal, verbose
        self.tail: deque[str] = deque(maxlen=400)
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._show(line)
        return len(text)

    def _show(self, line: str) -> None:
        line = _ANSI.sub("", line)
        self.tail.append(line)
        if self.verbose:
            self.terminal.write(line + "\n")
        elif _SHOW.search(line):
            m = _EXECUTOR_PREFIX.match(line)
            self.terminal.write((f"{m['time']} {line[m.end():]}" if m else line.strip()) + "\n")

    def flush(self) -> None:
        self.log_file.flush()
        self.terminal.flush()


@contextlib.contextmanager
def _readable_output(log_path: Path, *, verbose: bool) -> Iterator[_PipelineOutput]:
    """Route stdout (where kfp.local prints task logs) through :class:`_PipelineOutput`."""
    with open(log_path, "a", encoding="utf-8") as fh:
        out = _PipelineOutput(fh, sys.stdout, verbose=verbose)
        with contextlib.redirect_stdout(out):
            yield out
        out.flush()


@dataclass
class LocalRun:
    """Where a local run put its outputs, and its per-cycle summary rows."""

    run_dir: Path
    run_root: str
    tracking_uri: str | None
    experiment: ExperimentConfig
    rows: list[dict] = field(default_factory=list)
    state: str = "SUCCEEDED"
    budget_curve: Path | None = None
    baselines: dict[str, dict] = field(default_factory=dict)  # arm -> {"cycles", "label_efficiency", "vs"} (summary.json)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_root, self.experiment)


def prepare(exp: ExperimentConfig, run_dir: str | Path | None = None) -> tuple[ExperimentConfig, Path, str]:
    """Fill in the local defaults: run directory, store prefix and sqlite MLflow URI."""
    run_dir = Path(run_dir or Path("runs") / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_root = store.join(exp.store_root, run_dir.name) if exp.store_root else str(run_dir / "store")
    tracking = exp.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
    exp = exp.model_copy(update={"mlflow": exp.mlflow.model_copy(update={"tracking_uri": tracking})})
    return exp, run_dir, run_root


def run_local(exp: ExperimentConfig, run_dir: str | Path | None = None, *, verbose: bool = False) -> LocalRun:
    """Run the whole pipeline through ``kfp.local`` (SubprocessRunner, current Python environment).

    The terminal shows per-stage progress; kfp.local's full output goes to ``<run dir>/pipeline.log``
    (``verbose=True`` shows all of it). A failed task raises one :class:`ActivedetError` line: the
    failing stage, its error and the log's path (no traceback, no terminal colour codes).
    """
    from kfp import local

    from activedet.models.backend import DETECTRON2, backend_name
    from activedet.pipeline.dag import build_pipeline

    if backend_name(exp.training.preset) == DETECTRON2:  # the stages run here: fail before the first one, not in it
        from activedet.models.d2 import require_detectron2

        require_detectron2()
    exp, run_dir, run_root = prepare(exp, run_dir)
    log.info("local run in %s (store %s, MLflow %s)", run_dir, run_root, exp.mlflow.tracking_uri)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"), raise_on_error=True)
    pipeline = build_pipeline(exp, platform=False)
    outcome = LocalRun(run_dir=run_dir, run_root=run_root, tracking_uri=exp.mlflow.tracking_uri, experiment=exp)
    log_path = run_dir / "pipeline.log"
    try:
        with warnings.catch_warnings(), _readable_output(log_path, verbose=verbose) as output:
            # kfp.local warns on every task whose image name lacks "python"; here the venv runs them.
            warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
            pipeline(experiment=exp.to_json(), run_root=run_root)
    except RuntimeError as exc:  # kfp.local's way of reporting a failed task
        outcome.state = "FAILED"
        task, error = failure_summary(list(output.tail), str(exc))
        raise ActivedetError(f"stage {task} failed: {error} (full log: {log_path})") from None
    outcome.rows = report.read_rows(outcome.layout)
    summary = store.join(outcome.layout.summary_dir, "summary.json")
    if store.exists(summary):
        outcome.baselines = store.read_json(summary).get("baselines") or {}
    curve = store.join(run_root, "summary", "budget_curve.png")
    if not store.is_s3(curve) and store.exists(curve):
        outcome.budget_curve = store.local_path(curve)
    return outcome
