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
    """The summary rows of the finished cycles of a run (or arm), in cycle order.

    A baseline arm's curve starts from the main run's cycle-0 row: the arms share cycle 0.
    """
    rows = [store.read_json(uri) for uri in store.list_uris(lay.summary_dir) if uri.rsplit("/", 1)[-1].startswith("cycle-") and uri.endswith(".json")]
    if lay.arm and store.exists(lay.summary_row(0)) and not any(r["cycle"] == 0 for r in rows):
        rows.append(store.read_json(lay.summary_row(0)))
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


def plot_budget_curve(rows: list[dict], path: str | Path, *, title: str = "budget curve",
                      baselines: dict[str, list[dict]] | None = None, strategy: str = "") -> Path:
    """AP and AP50 against the number of labeled images (one point per cycle), each baseline arm dashed beside it."""
    from activedet.plots import save_png, subplots

    fig, ax = subplots(figsize=(6, 4))
    for name, curve, style in ((strategy, rows, "-"), *((b, r, "--") for b, r in (baselines or {}).items())):
        for key, color in (("AP50", "tab:blue"), ("AP", "tab:orange")):
            pts = [(r["labeled"], r[key]) for r in curve if r.get(key) is not None]
            if pts:
                label = f"{key} {name}".strip() if baselines else key
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color, label=label,
                        alpha=1.0 if style == "-" else 0.7)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("metric")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_png(fig, path)


def compare_arms(rows: list[dict], baseline: list[dict], *, metrics: tuple[str, ...] = ("AP", "AP50")) -> dict[str, float]:
    """The run against one baseline arm (same cycle 0): AUC@B difference and labels saved per metric.

    ``auc_diff.m``: AUC@B of the run minus the arm's, both up to the smaller final budget;
    ``labels_saved.m``: labels the arm needed to first reach its final ``m`` minus the labels the
    run needed to reach it (the run charged its final count when it never does); positive = the
    run's strategy saved labels.
    """
    from activedet.al.budget import auc_at, labels_to_reach

    def curve(rs: list[dict], m: str) -> tuple[list[float], list[float], list[int]]:
        keep = [r for r in rs if isinstance(r.get(m), (int, float)) and r.get("unlabeled") is not None]
        pct = [100.0 * r["labeled"] / max(r["labeled"] + r["unlabeled"], 1) for r in keep]
        return pct, [r[m] for r in keep], [r["labeled"] for r in keep]

    out: dict[str, float] = {}
    for m in metrics:
        (pa, ya, la), (pb, yb, lb) = curve(rows, m), curve(baseline, m)
        if len(pa) < 1 or len(pb) < 1:
            continue
        upto = min(pa[-1], pb[-1])
        out[f"auc_diff.{m}"] = auc_at(pa, ya, upto=upto) - auc_at(pb, yb, upto=upto)
        target = yb[-1]
        reach = labels_to_reach(la, ya, target)
        out[f"labels_saved.{m}"] = labels_to_reach(lb, yb, target) - (reach if reach == reach else la[-1])
    return out


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
