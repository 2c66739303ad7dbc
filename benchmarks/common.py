"""Helpers shared by the benchmark scripts: label-efficiency metrics, timing, memory, output.

Pure functions here are unit-tested (tests/test_benchmarks_smoke.py). The label-efficiency
metrics follow METHODS.md section 7 (Mittal et al., appendix C): a budget curve is a list of
points ``(b_i, p_i)`` with ``b`` the percentage of the pool that is labeled and ``p`` a metric;

* ``AUC@B = sum_i (b_{i+1} - b_i) * (p_i + p_{i+1}) / 2`` over the points with ``b <= B`` (the
  curve is cut at ``B`` by linear interpolation when ``B`` falls between two points);
* ``metric@B`` -- the metric once ``B`` % is labeled (linear interpolation between points).

Both are NaN when ``B`` lies outside the measured budget range (never extrapolated).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- label efficiency


# One implementation, the product's: the pipeline reports the same quantities for every run.
from activedet.al.budget import auc_at, labels_to_reach, metric_at, paired_bootstrap, verdict  # noqa: E402,F401


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value), NaNs ignored."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_pm(mean: float, std: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}+-{std:.{digits}f}"


# --------------------------------------------------------------------------- timing and memory


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` is the elapsed wall seconds."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process's address space so far, MiB (``VmHWM``).

    Not ``ru_maxrss``: that one carries the parent's peak across fork + exec, so a spawned
    worker would report its parent's footprint.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(amount: float, seconds: float) -> float:
    return amount / max(seconds, 1e-9)


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
        with open("/proc/meminfo") as fh:
            info["mem_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- output


def format_table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    """A plain fixed-width text table (also valid Markdown with the leading/trailing pipes)."""
    headers = headers or columns
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_results(name: str, payload: dict, rows: list[dict], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.json`` (payload) and ``<name>.csv`` (rows) under ``out_dir``."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    jpath.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(cpath, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return jpath, cpath


FIGURE_COLUMNS = ["section", "name", "value", "unit", "baseline", "baseline_value", "ratio"]
FIGURE_HEADERS = ["section", "figure", "value", "unit", "baseline", "baseline value", "ratio"]


def figures_payload(benchmark: str, args, started: float, load0: float, rows: list[dict]) -> dict:
    """The JSON payload of a figures benchmark: command, machine, load, wall time, settings, rows."""
    return {"benchmark": benchmark, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine(), "loadavg_1m_at_start": load0, "seconds": round(time.time() - started, 1),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}


def write_figures(name: str, payload: dict, rows: list[dict], out_dir: Path, header: str) -> str:
    """Write ``<name>.json`` / ``.csv`` and ``<name>.md`` (``header``, then the figures table); print the table."""
    jpath, cpath = write_results(name, payload, rows, out_dir)
    table = format_table(rows, FIGURE_COLUMNS, FIGURE_HEADERS)
    (Path(out_dir) / f"{name}.md").write_text(f"{header}\n\n{table}\n")
    print()
    print(table)
    print(f"\n{len(rows)} figures in {payload['seconds']:.0f} s -> {jpath} and {cpath}")
    return table


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def progress(msg: str) -> None:
    """One progress line on stdout, timestamped, flushed (benchmarks print; the library logs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
