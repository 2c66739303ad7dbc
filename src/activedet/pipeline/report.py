"""Run summaries people compare: the per-cycle table, the budget curve and per-class AP plots."""

from __future__ import annotations

from pathlib import Path

from activedet import store
from activedet.pipeline.layout import RunLayout

#: (column header, row key, format) of the summary table
COLUMNS = (
    ("cycle", "cycle", "{:d}"),
    ("labeled", "labeled", "{:d}"),
    ("AP", "AP", "{:.3f}"),
    ("AP50", "AP50", "{:.3f}"),
    ("pseudo-labels", "pseudo_labels", "{:d}"),
    ("strategy", "strategy", "{}"),
)


def read_rows(lay: RunLayout) -> list[dict]:
    """The summary rows of the finished cycles of a run, in cycle order."""
    rows = [store.read_json(uri) for uri in store.list_uris(lay.summary_dir) if uri.rsplit("/", 1)[-1].startswith("cycle-") and uri.endswith(".json")]
    return sorted(rows, key=lambda r: r["cycle"])


def format_table(rows: list[dict]) -> str:
    """A plain-text table: cycle, labeled count, AP, AP50, pseudo-label count, strategy."""
    cells = [[h for h, _, _ in COLUMNS]]
    for row in rows:
        line = []
        for _, key, fmt in COLUMNS:
            value = row.get(key)
            line.append("-" if value is None else fmt.format(int(value) if fmt == "{:d}" else value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    out = ["  ".join(c.rjust(w) if i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot_budget_curve(rows: list[dict], path: str | Path, *, title: str = "budget curve") -> Path:
    """AP and AP50 against the number of labeled images (one point per cycle)."""
    from activedet.plots import save_png, subplots

    fig, ax = subplots(figsize=(6, 4))
    xs = [r["labeled"] for r in rows]
    for key in ("AP50", "AP"):
        pts = [(x, r[key]) for x, r in zip(xs, rows, strict=True) if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("metric")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_png(fig, path)
