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


def label_efficiency(rows: list[dict], *, metrics: tuple[str, ...] = ("AP", "AP50"), target: float | None = None,
                     target_metric: str = "AP", budgets: list[float] | None = None) -> dict[str, float]:
    """Run-level label-efficiency figures from the per-cycle rows (METHODS.md section 7).

    The budget of a cycle is the labeled share of its pool (``labeled / (labeled + unlabeled)``,
    in percent). For each metric ``m``: ``auc.m`` (AUC@B over the whole curve, metric x
    percentage points), ``auc_at_<B>pct.m`` and ``metric_at_<B>pct.m`` at each budget ``B`` of
    ``budgets`` (unset: every cycle's; NaN outside the measured curve); with a ``target``,
    ``labels_to_reach.<target_metric>`` (NaN when never reached).

    Returns:
        a flat mapping of MLflow-safe names to floats.
    """
    from activedet.al.budget import auc_at, labels_to_reach, metric_at

    points = [r for r in rows if r.get("labeled") is not None and r.get("unlabeled") is not None]
    if not points:
        return {}
    pct = [100.0 * r["labeled"] / max(r["labeled"] + r["unlabeled"], 1) for r in points]
    out: dict[str, float] = {"budget_pct_final": pct[-1], "labeled_final": float(points[-1]["labeled"])}
    for m in metrics:
        keep = [(b, r[m]) for b, r in zip(pct, points, strict=True) if isinstance(r.get(m), (int, float))]
        if not keep:
            continue
        bs, ys = [b for b, _ in keep], [y for _, y in keep]
        out[f"auc.{m}"] = auc_at(bs, ys)
        for b in bs if budgets is None else budgets:
            tag = f"{b:.3g}pct"
            out[f"auc_at_{tag}.{m}"] = auc_at(bs, ys, upto=b)
            out[f"metric_at_{tag}.{m}"] = metric_at(bs, ys, b)
    if target is not None:
        have = [(r["labeled"], r[target_metric]) for r in points if isinstance(r.get(target_metric), (int, float))]
        out[f"labels_to_reach.{target_metric}"] = labels_to_reach([x for x, _ in have], [y for _, y in have], target)
    return out
