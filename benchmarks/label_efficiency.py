"""Label efficiency: does active learning save labels? The product's own stages, paired seeds, intervals.

Each compared strategy is an experiment: the pool's base experiment (the sizes and training
settings below) with that strategy's ``acquisition`` and ``ssl`` sections. Every cycle runs the
stages :func:`activedet.pipeline.plan.cycle_stages` lists, each with the ``Config`` its
``from_experiment`` builds -- the configs ``activedet run`` runs, product defaults included
(every cycle's teacher from scratch, X+SSL scored by its student, evaluation on the dataset's val
split) -- in-process instead of through kfp.local. The only thing changed is *where* outputs go:
each stage output is content-addressed (a hash of the stage's config with its inputs resolved),
so work that is the same computation runs once -- the cycle-0 init, teacher, pseudo-labels and
student of a seed are shared by every strategy -- and a re-run resumes where it stopped.

Strategies (``--strategies``): random, random+ssl, entropy, inconsistency, unified, coreset,
coreset+ssl, unified+ssl, auto. Pools (``--pools``):

* ``traffic-cams``: the real frames of ../shared/datasets/traffic-cams, imported and split by
  scene (``activedet data split``: near-duplicate clusters never straddle pool and held-out);
  its small boxes train on full-resolution crops with native-scale inference (:data:`POOL_TRAINING`);
* ``synth-redundant``: a SynthDrive pool of ``--pool`` frames in sequences of ``--frames``
  near-duplicates (long-tailed classes);
* ``synth-diverse``: ``--pool`` independent SynthDrive frames (one per sequence).

Both SynthDrive pools are evaluated on the same ``--eval-images`` independent held-out frames.
For each pool, strategy and seed the budget curve gives AUC@B and metric@B at the final budget
and the labels needed to reach random's final metric (METHODS.md section 7); each strategy is
compared with random by the mean paired difference over seeds and its 95 % bootstrap interval,
and a claim holds only when the interval excludes zero with at least 5 seeds
(:func:`activedet.al.budget.verdict`). Pairs are a seed on one machine (records carry the GPU, or
the CPU's model name, family / model / stepping and vector ISA): another CPU's float kernels train
another cycle-0 teacher, so records imported from a different machine pair only with that
machine's runs, and a job whose cycle-0 teacher differs from the records of its own tag stops.

    .venv/bin/python benchmarks/label_efficiency.py --smoke          # seconds: CI runs it
    .venv/bin/python benchmarks/label_efficiency.py                  # defaults: see --help (hours on CPU)
    .venv/bin/python benchmarks/label_efficiency.py --pools synth-redundant --strategies random coreset auto --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/label_efficiency.py --render benchmarks/results/label_efficiency.json

Outputs under ``--out`` (default benchmarks/results/): ``<name>.json`` (settings, machine,
records, curves, comparisons), ``<name>.csv`` (one row per pool x strategy x cycle),
``<name>_comparisons.csv``, ``<name>_budget_curve.png`` (mean and 95 % interval per cycle) and
``<name>.md``. Records of earlier invocations on the same ``--work`` folder are kept
(``records.jsonl``), so seeds and pools can be added across sessions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    auc_at,
    format_table,
    labels_to_reach,
    machine,
    metric_at,
    paired_bootstrap,
    progress,
    verdict,
    write_results,
)

POOLS = ("traffic-cams", "synth-redundant", "synth-diverse")
#: per-pool training settings on top of the common ones: traffic-cams' median box is 26 x 22 px at
#: 640 x 360, ~9 px at the presets' 128-px short side, so it trains on full-resolution crops of
#: SynthDrive's frame size and runs inference at full resolution (docs/detector.md)
POOL_TRAINING: dict[str, dict] = {"traffic-cams": {"preset_options": {"native_scale": True}, "crop_size": [128, 256]}}
TRAFFIC_CAMS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "traffic-cams" / "data.yaml"

#: strategy name -> the experiment sections it sets (everything else is the pool's base experiment)
STRATEGIES: dict[str, dict] = {
    "random": {"acquisition": {"strategy": "random"}, "ssl": {"enabled": False}},
    "random+ssl": {"acquisition": {"strategy": "random"}, "ssl": {"enabled": True}},
    "entropy": {"acquisition": {"score": "entropy", "strategy": "topk"}, "ssl": {"enabled": False}},
    "inconsistency": {"acquisition": {"score": "inconsistency", "strategy": "topk"}, "ssl": {"enabled": False}},
    "unified": {"acquisition": {"score": "entropy", "strategy": "unified"}, "ssl": {"enabled": False}},
    "coreset": {"acquisition": {"score": "embedding", "strategy": "coreset"}, "ssl": {"enabled": False}},
    "coreset+ssl": {"acquisition": {"score": "embedding", "strategy": "coreset"}, "ssl": {"enabled": True}},
    "unified+ssl": {"acquisition": {"score": "entropy", "strategy": "unified"}, "ssl": {"enabled": True}},
    "auto": {"acquisition": {"score": "entropy", "strategy": "auto"}, "ssl": {"enabled": False}},
    # auto without its model-quality cell: the pool's redundancy and the labeled share decide alone
    # (the rule the traffic-cams check rejected, docs/al.md)
    "auto-pool-only": {"acquisition": {"score": "entropy", "strategy": "auto", "strategy_params": {
        "auto_min_ap50": 0.0}}, "ssl": {"enabled": False}},
    # auto with Mittal et al.'s Table 6 cells as printed (the product's defaults before they were measured)
    "auto-table6": {"acquisition": {"score": "entropy", "strategy": "auto", "strategy_params": {
        "auto_redundant_strategy": "coreset", "auto_low_budget_pct": 5.0, "auto_min_ap50": 0.0}}, "ssl": {"enabled": False}},
}
#: arms that choose a strategy per cycle: compared with the best fixed strategy, never counted as one
AUTO_ARMS = tuple(name for name, sections in STRATEGIES.items() if sections["acquisition"]["strategy"] == "auto")
BASELINE = "random"
#: run root of the layout the stage configs are built for; never written: outputs are content-addressed
VIRTUAL_ROOT = "s3://activedet-virtual/run"
METRICS = ("AP50", "AP")


# --------------------------------------------------------------------------- settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS))
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="paired seeds: one initial set each")
    p.add_argument("--pool", type=int, default=1000, help="SynthDrive pool images")
    p.add_argument("--frames", type=int, default=20, help="synth-redundant: consecutive frames per sequence")
    p.add_argument("--eval-images", type=int, default=150, help="SynthDrive held-out frames (independent scenes)")
    p.add_argument("--initial-pct", type=float, default=2.0, help="I as %% of the pool")
    p.add_argument("--budget-pct", type=float, default=2.0, help="B per cycle as %% of the pool")
    p.add_argument("--cycles", type=int, default=4, help="training cycles (cycle 0 plus cycles - 1 selections)")
    p.add_argument("--height", type=int, default=128, help="SynthDrive frame height")
    p.add_argument("--width", type=int, default=256, help="SynthDrive frame width")
    p.add_argument("--preset", default="lite0_fpn", help="detector preset (default: the pretrained CPU preset)")
    p.add_argument("--backbone-weights", default="imagenet", help="training.backbone_weights ('none' = from scratch)")
    p.add_argument("--teacher-iters", type=int, default=150)
    p.add_argument("--student-iters", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--pl-filter", default="fixed")
    p.add_argument("--pl-params", default='{"tau": 0.7}', help="pseudo-label filter parameters (JSON)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workers", type=int, default=2, help="parallel (pool, seed) jobs, one torch thread each")
    p.add_argument("--work", type=Path, default=None, help="work folder (default /tmp/activedet-<name>); re-runs resume")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, from-scratch tiny preset: seconds, checks that it all runs")
    p.add_argument("--render", type=Path, default=None, help="only re-aggregate and re-draw this results JSON")
    p.add_argument("--import-records", type=Path, default=None,
                   help="results JSON of an earlier invocation (same settings): its records count as done, so a fresh "
                        "--work folder extends a committed benchmark instead of recomputing it")
    args = p.parse_args(argv)
    if args.smoke:
        args.pool, args.frames, args.eval_images, args.cycles = 24, 6, 8, 2
        args.initial_pct = args.budget_pct = 25.0
        args.height, args.width, args.preset, args.backbone_weights = 64, 128, "tiny", "none"
        args.teacher_iters, args.student_iters, args.batch_size = 3, 2, 2
        args.pools = [p for p in args.pools if p != "traffic-cams"] or ["synth-redundant"]
    if args.pool % args.frames:
        p.error("--pool must be a multiple of --frames")
    if args.name is None:
        args.name = "label_efficiency" + ("_cuda" if args.device == "cuda" else "") + ("_smoke" if args.smoke else "")
    if args.work is None:
        args.work = Path("/tmp") / ("activedet-" + args.name.replace("_", "-"))
    json.loads(args.pl_params)
    return args


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- datasets


def _with_held_out(pool_uri: str, held_out_uri: str, out_uri: str) -> None:
    """One dataset: ``pool_uri``'s images as train, ``held_out_uri``'s as val (ids prefixed ``eval/``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from activedet import store
    from activedet.data.dataset import load_dataset, write_dataset_tables

    pool, held = load_dataset(pool_uri), load_dataset(held_out_uri)
    parts, boxes = [], []
    for ds, split, prefix in ((pool, "train", ""), (held, "val", "eval/")):
        t = ds.images
        t = t.set_column(t.schema.get_field_index("uri"), "uri",
                         pa.array([ds.resolve_uri(u) for u in t.column("uri").to_pylist()], pa.string()))
        t = t.set_column(t.schema.get_field_index("split"), "split", pa.array([split] * t.num_rows, t.schema.field("split").type))
        t = t.set_column(t.schema.get_field_index("image_id"), "image_id", pc.binary_join_element_wise(prefix, t.column("image_id"), ""))
        b = ds.boxes.set_column(ds.boxes.schema.get_field_index("image_id"), "image_id",
                                pc.binary_join_element_wise(prefix, ds.boxes.column("image_id"), ""))
        parts.append(t)
        boxes.append(b)
    with store.OutputWriter(out_uri) as out:
        write_dataset_tables(out, pa.concat_tables(parts), pa.concat_tables(boxes, promote_options="default"), pool.categories,
                             {"source": "label_efficiency benchmark", "pool": pool_uri, "held_out": held_out_uri})


def make_datasets(args) -> dict[str, str]:
    """The dataset of each pool: train split = the pool, val split = its held-out set."""
    from activedet import store
    from activedet.data.synth import generate_synthdrive

    root = args.work / "datasets"
    out: dict[str, str] = {}
    size = {"height": args.height, "width": args.width, "val_fraction": 0.0, "test_fraction": 0.0}
    synth = {
        "synth-redundant": {"sequences": args.pool // args.frames, "frames": args.frames, "seed": 0, **size},
        "synth-diverse": {"sequences": args.pool, "frames": 1, "seed": 0, **size},
    }
    held_spec = {"sequences": args.eval_images, "frames": 1, "seed": 1000, **size}
    for pool in args.pools:
        uri = str(root / f"{pool}-{_key(synth.get(pool), held_spec if pool in synth else None)}")
        out[pool] = uri
        if store.is_committed(uri):
            continue
        t0 = time.perf_counter()
        if pool in synth:
            held = str(root / f"held-out-{_key(held_spec)}")
            if not store.is_committed(held):
                generate_synthdrive(held, **held_spec)
            raw = str(root / f"{pool}-raw-{_key(synth[pool])}")
            if not store.is_committed(raw):
                generate_synthdrive(raw, **synth[pool])
            _with_held_out(raw, held, uri)
        else:
            from activedet.data.split import SplitSettings, split_dataset
            from activedet.data.yolo import import_yolo

            raw = str(root / "traffic-cams-raw")
            if not store.is_committed(raw):
                import_yolo(str(TRAFFIC_CAMS), out_uri=raw)
            split_dataset(raw, uri, SplitSettings(val_fraction=0.3, seed=0, workers=2))
        progress(f"dataset {pool} ready in {time.perf_counter() - t0:.1f} s: {uri}")
    return out


def base_experiment(args, pool: str, dataset_uri: str, seed: int) -> dict:
    """The pool's experiment before a strategy sets its sections (sizes from the pool's train split)."""
    from activedet.data.dataset import load_dataset

    n = len(load_dataset(dataset_uri).split_ids("train"))
    initial = max(2, round(n * args.initial_pct / 100))
    budget = max(1, round(n * args.budget_pct / 100))
    training = {"preset": args.preset, "teacher_iterations": args.teacher_iters, "student_iterations": args.student_iters,
                "batch_size": args.batch_size, "num_workers": 0, "checkpoint_every": 10_000}
    if args.backbone_weights != "none":
        training["backbone_weights"] = args.backbone_weights
    training.update(POOL_TRAINING.get(pool, {}))
    return {
        "name": f"le-{pool}", "dataset": {"uri": dataset_uri}, "initial_size": initial, "budget": budget, "cycles": args.cycles,
        "seed": seed, "device": args.device, "training": training,
        "pseudo_labels": {"filter": args.pl_filter, "params": json.loads(args.pl_params)},
    }


def strategy_experiment(base: dict, strategy: str):
    from activedet.pipeline.plan import load_experiment

    sections = STRATEGIES[strategy]
    exp = {**base, "acquisition": {**base.get("acquisition", {}), **sections["acquisition"]}, "ssl": sections["ssl"]}
    return load_experiment(exp, check=False)


# --------------------------------------------------------------------------- one (pool, seed) job


@dataclass
class Job:
    """Every strategy's loop for one pool and seed; stage outputs content-addressed under ``work``."""

    pool: str
    seed: int
    base: dict
    work: str
    strategies: list[str]
    #: ``records.jsonl``: each finished strategy's records are appended at once, so a killed job keeps them
    log: str | None = None
    #: strategies whose every cycle is already recorded for this pool and seed: not run again
    done: list[str] = field(default_factory=list)
    #: the CPU (or GPU) the records are measured on: pairs never mix machines (float kernels differ)
    machine: str = ""
    #: cycle-0 AP50 that earlier records of this pool, seed and machine hold (None: none yet): a
    #: cycle-0 teacher that does not reproduce it stops the job, since its curves would not pair
    cycle0_ap50: float | None = None
    timings: dict = field(default_factory=dict)

    def _record_time(self, stage: str, seconds: float | None) -> None:
        t = self.timings.setdefault(stage, {"runs": 0, "seconds": 0.0, "reused": 0})
        if seconds is None:
            t["reused"] += 1
        else:
            t["runs"] += 1
            t["seconds"] += seconds

    def run_stage(self, stage: str, exp, cycle: int, resolved: dict[str, str], **upstream) -> dict:
        """Run the product's ``stage`` config of ``cycle`` with its inputs resolved; returns its result.

        ``resolved`` maps the run layout's URIs (a virtual run root) to where those outputs really
        are; the stage's own output is put at a hash of its resolved config and added to it.
        """
        from activedet import store
        from activedet.pipeline import plan
        from activedet.stages import stage_module

        config = plan.stage_config(stage, exp, VIRTUAL_ROOT, cycle, **upstream)
        data = config.model_dump(mode="json")
        update: dict = {}
        for name, value in data.items():
            if name == "output_uri":
                continue
            if name.endswith("_uri") and isinstance(value, str):
                update[name] = resolved.get(value, value)
            elif name.endswith("_uris") and isinstance(value, list):
                update[name] = [resolved.get(v, v) for v in value]
        key = _key(stage, {k: v for k, v in {**data, **update}.items() if k != "output_uri"})
        out = str(Path(self.work, stage, key))
        resolved[data["output_uri"]] = out
        result_file = Path(self.work, stage, f"{key}.result.json")
        if store.is_committed(out) and result_file.exists():
            self._record_time(stage, None)
            return json.loads(result_file.read_text())
        t0 = time.perf_counter()
        result = stage_module(stage).run(config.model_copy(update={**update, "output_uri": out}))
        seconds = time.perf_counter() - t0
        self._record_time(stage, seconds)
        payload = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        result_file.write_text(json.dumps(payload, default=str))
        progress(f"{self.pool} seed {self.seed}: cycle {cycle} {stage} {seconds:.1f} s")
        return payload

    def check_cycle0(self, ap50: float) -> None:
        """Refuse a cycle-0 teacher that differs from the one earlier records of this run key hold."""
        if self.cycle0_ap50 is None:
            self.cycle0_ap50 = ap50
        elif abs(ap50 - self.cycle0_ap50) > 1e-6:
            raise RuntimeError(
                f"{self.pool} seed {self.seed}: the cycle-0 teacher gives AP50 {ap50:.4f} here but {self.cycle0_ap50:.4f} in "
                f"the records tagged {self.machine!r}: another processor carries the same tag, so its curves cannot be "
                "paired with these; re-run the baseline under a distinct machine tag")

    def run(self) -> list[dict]:
        from activedet.al import ledger as ledger_mod
        from activedet.data.dataset import load_dataset
        from activedet.pipeline import plan
        from activedet.pipeline.layout import RunLayout

        pool_size = len(load_dataset(self.base["dataset"]["uri"]).split_ids("train"))
        records = []
        for strategy in self.strategies:
            if strategy in self.done:
                continue
            exp = strategy_experiment(self.base, strategy)
            resolved: dict[str, str] = {}
            self.run_stage("init", exp, 0, resolved)
            layout = RunLayout(VIRTUAL_ROOT, exp)
            for cycle in range(exp.cycles):
                ev: dict = {}
                choice = share = quality = None
                for stage, upstream in plan.cycle_stages(exp, cycle):
                    result = self.run_stage(stage, exp, cycle, resolved, **upstream)
                    if stage == "evaluate":
                        ev = result
                    if stage == "select-batch":
                        info = result.get("info") or {}
                        choice, share = info.get("auto.choice"), info.get("auto.near_duplicate_share")
                        quality = info.get("auto.model_ap50")
                table, _ = ledger_mod.read_ledger(resolved[layout.ledger(cycle)])
                labeled = len(ledger_mod.ids_in_state(table, "labeled"))
                rec = {"pool": self.pool, "seed": self.seed, "machine": self.machine, "strategy": strategy, "cycle": cycle,
                       "labeled": labeled,
                       "pct": 100.0 * labeled / pool_size, **{m: 100.0 * (ev.get(m) or 0.0) for m in METRICS}}
                if choice:
                    rec["auto_choice"] = choice
                    rec["auto_near_duplicate_share"] = share
                    rec["auto_model_ap50"] = quality
                if cycle == 0 and not strategy.endswith("+ssl"):
                    self.check_cycle0(rec["AP50"])
                records.append(rec)
                progress(f"{self.pool} seed {self.seed}: {strategy:13s} cycle {cycle}: {labeled:4d} labels "
                         f"AP50 {rec['AP50']:5.1f} AP {rec['AP']:5.1f}" + (f" (auto chose {choice})" if choice else ""))
            if self.log:
                # one write per strategy (lines well under PIPE_BUF): parallel jobs' appends never interleave
                with open(self.log, "a") as fh:
                    fh.write("".join(json.dumps(r) + "\n" for r in records if r["strategy"] == strategy))
        return records


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM as SystemExit, so the worker pool's ``with`` block terminates its workers."""
    raise SystemExit(128 + signum)


def _job_main(spec: dict) -> dict:
    """Worker entry point: one (pool, seed) job with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(spec.pop("threads"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job = Job(**spec)
    t0 = time.perf_counter()
    records = job.run()
    return {"pool": job.pool, "seed": job.seed, "records": records, "timings": job.timings, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- aggregation


def run_key(record: dict) -> tuple[int, str]:
    """What pairs two strategies' curves: the seed on one machine. The same seed on another CPU
    trains a different cycle-0 teacher (its float kernels differ), so such curves are never paired."""
    return record["seed"], record.get("machine", "")


def curves_by_seed(records: list[dict], pool: str, strategy: str) -> dict[tuple[int, str], dict[str, list]]:
    """``{(seed, machine): curve}`` of ``strategy`` on ``pool``."""
    out: dict[tuple[int, str], dict[str, list]] = {}
    for r in sorted(records, key=lambda r: r["cycle"]):
        if r["pool"] == pool and r["strategy"] == strategy:
            c = out.setdefault(run_key(r), {"pct": [], "labeled": [], **{m: [] for m in METRICS}})
            for k in ("pct", "labeled", *METRICS):
                c[k].append(r[k])
    return out


def per_seed_figures(curve: dict[str, list], baseline: dict[str, list] | None, metric: str) -> dict[str, float]:
    """AUC@B and metric@B at the curve's final budget; labels to reach the baseline's final metric."""
    final = curve["pct"][-1]
    out = {"auc": auc_at(curve["pct"], curve[metric], final), "final": metric_at(curve["pct"], curve[metric], final)}
    if baseline is not None:
        out["labels_to_reach"] = labels_to_reach(curve["labeled"], curve[metric], baseline[metric][-1])
    return out


def comparisons(records: list[dict], pools: list[str], strategies: list[str]) -> list[dict]:
    """Each strategy vs random per pool: mean paired difference over seeds, 95 % bootstrap interval, verdict.

    ``labels_saved``: the labels random needed to first reach its own final metric minus those the
    strategy needed to reach it (random vs itself: 0). A strategy that never reaches it within its
    budget is counted as needing its final label count (the most it can be credited with).
    """
    rows = []
    for pool in pools:
        base = curves_by_seed(records, pool, BASELINE)
        for strategy in strategies:
            if strategy == BASELINE:
                continue
            curves = curves_by_seed(records, pool, strategy)
            seeds = sorted(set(curves) & set(base))
            if not seeds:  # not run on this pool (strategies may be added to one pool only)
                continue
            for metric in METRICS:
                diffs: dict[str, list[float]] = {"auc": [], "final": [], "labels_saved": []}
                for s in seeds:
                    a, b = per_seed_figures(curves[s], base[s], metric), per_seed_figures(base[s], None, metric)
                    diffs["auc"].append(a["auc"] - b["auc"])
                    diffs["final"].append(a["final"] - b["final"])
                    target = base[s][metric][-1]
                    own = labels_to_reach(base[s]["labeled"], base[s][metric], target)
                    reach = a["labels_to_reach"]
                    diffs["labels_saved"].append(own - (reach if reach == reach else curves[s]["labeled"][-1]))
                for quantity, values in diffs.items():
                    # resampling seeded by the row's identity: adding a pool or strategy leaves others' intervals as they were
                    mean, lo, hi = paired_bootstrap(values, seed=int(_key(pool, strategy, metric, quantity), 16) % 2**31)
                    rows.append({"pool": pool, "strategy": strategy, "metric": metric, "quantity": quantity, "mean": mean,
                                 "low": lo, "high": hi, "seeds": len(values), "verdict": verdict(lo, hi, len(values))})
    return rows


def curve_table(records: list[dict]) -> list[dict]:
    """Per pool, strategy and cycle: labels, mean and 95 % interval of each metric over seeds."""
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault((r["pool"], r["strategy"], r["cycle"]), []).append(r)
    rows = []
    for (pool, strategy, cycle), rs in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]), kv[0][2])):
        row = {"pool": pool, "strategy": strategy, "cycle": cycle, "labeled": rs[0]["labeled"], "pct": round(rs[0]["pct"], 2),
               "seeds": len(rs)}
        for m in METRICS:
            mean, lo, hi = paired_bootstrap([r[m] for r in rs], seed=cycle)
            row.update({f"{m}_mean": mean, f"{m}_low": lo, f"{m}_high": hi})
        choices = [r["auto_choice"] for r in rs if r.get("auto_choice")]
        if choices:
            row["auto_choices"] = ",".join(choices)
        rows.append(row)
    return rows


def _order(strategy: str) -> int:
    names = list(STRATEGIES)
    return names.index(strategy) if strategy in names else len(names)


def best_fixed_check(rows: list[dict], pools: list[str], records: list[dict]) -> list[dict]:
    """Is ``auto`` as good as the best fixed strategy (by mean AUC of AP50 vs random) on each pool?

    Paired by seed: ``auto - best`` AUC with its 95 % bootstrap interval. ``auto_within_best`` is
    true when that interval reaches 0 (auto is not shown worse than the best fixed choice) and,
    separately, ``auto_worse`` says when the interval lies below 0.
    """
    out = []
    for pool in pools:
        auc = {r["strategy"]: r for r in rows if r["pool"] == pool and r["metric"] == "AP50" and r["quantity"] == "auc"}
        fixed = {s: r for s, r in auc.items() if s not in AUTO_ARMS and r["mean"] == r["mean"]}  # NaN: no pairs
        fixed["random"] = {"mean": 0.0, "low": 0.0, "high": 0.0, "strategy": "random"}
        best = max(fixed.values(), key=lambda r: r["mean"])
        for arm in (a for a in AUTO_ARMS if a in auc):
            mine, theirs = curves_by_seed(records, pool, arm), curves_by_seed(records, pool, best["strategy"])
            seeds = sorted(set(mine) & set(theirs))
            diffs = [per_seed_figures(mine[s], None, "AP50")["auc"] - per_seed_figures(theirs[s], None, "AP50")["auc"]
                     for s in seeds]
            mean, lo, hi = paired_bootstrap(diffs, seed=int(_key(pool, f"{arm}-vs-best"), 16) % 2**31)
            enough = len(seeds) >= 5
            out.append({"pool": pool, "arm": arm, "best_fixed": best["strategy"], "best_mean": round(best["mean"], 3),
                        "auto_minus_best": round(mean, 3), "low": round(lo, 3), "high": round(hi, 3), "seeds": len(seeds),
                        "auto_within_best": (hi >= 0) if enough else f"too few seeds ({len(seeds)})"})
    return out


# --------------------------------------------------------------------------- plot and Markdown


def plot(curves: list[dict], pools: list[str], strategies: list[str], path: Path) -> Path:
    from activedet.plots import save_png, subplots

    fig, axes = subplots(1, len(pools), figsize=(6.5 * len(pools), 4.8), squeeze=False)
    for ax, pool in zip(axes[0], pools, strict=True):
        for strategy in strategies:
            rows = [r for r in curves if r["pool"] == pool and r["strategy"] == strategy]
            if not rows:
                continue
            x = [r["pct"] for r in rows]
            line, = ax.plot(x, [r["AP50_mean"] for r in rows], "--" if strategy.endswith("+ssl") else "-", marker="o", ms=3,
                            label=strategy)
            ax.fill_between(x, [r["AP50_low"] for r in rows], [r["AP50_high"] for r in rows], color=line.get_color(), alpha=0.12)
        seeds = max((r["seeds"] for r in curves if r["pool"] == pool), default=0)
        ax.set_title(f"{pool}: AP50 mean and 95 % interval ({seeds} seeds)")
        ax.set_xlabel("% of pool labeled")
        ax.set_ylabel("AP50 on the held-out set (x100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path, dpi=110)
    return path


def _interval(mean: float, lo: float, hi: float) -> str:
    return "n/a" if mean != mean else f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def markdown(payload: dict) -> str:
    st = payload["settings"]
    lines = [
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine'].get('cpu_model')} ({payload['machine'].get('cpus')} CPUs), torch "
        f"{payload['machine'].get('torch')}; load average at start {payload.get('loadavg_1m_at_start')}; "
        f"wall time of this invocation {payload['seconds'] / 60:.1f} min  ",
        f"Pools {st['pools']}, seeds {st['seeds']}, I = {st['initial_pct']} % and B = {st['budget_pct']} % of each pool, "
        f"{st['cycles']} cycles, preset {st['preset']} (backbone weights: {st['backbone_weights']}), teacher "
        f"{st['teacher_iters']} it from scratch every cycle, student {st['student_iters']} it, pseudo-labels {st['pl_filter']} "
        f"{st['pl_params']}; every stage config from the experiment (`plan.stage_config`).",
        "",
        "Each strategy vs random, mean paired difference over seeds (a pair: one seed on one machine) [95 % bootstrap "
        "interval]; AUC of AP50 "
        "(x100 x percentage points), final AP50, labels saved at random's final AP50:",
        "",
    ]
    lines[-2:-2] = [f"Cycle-0 AP50 spread between non-SSL strategies of one seed on one machine (they share the cycle-0 teacher; "
                    f"0 = reproduced exactly): {payload.get('cycle0_spread', 0.0):.4f}.", ""]
    cmp_rows = [r for r in payload["comparisons"] if r["metric"] == "AP50"]
    table = []
    for pool in st["pools"]:
        for strategy in st["strategies"]:
            cells = {r["quantity"]: r for r in cmp_rows if r["pool"] == pool and r["strategy"] == strategy}
            if cells:
                table.append({"pool": pool, "strategy": strategy, "seeds": cells["auc"]["seeds"],
                              **{q: f"{_interval(c['mean'], c['low'], c['high'])} {c['verdict']}" for q, c in cells.items()}})
    lines.append(format_table(table, ["pool", "strategy", "seeds", "auc", "final", "labels_saved"],
                              ["pool", "strategy", "pairs", "AUC@B (AP50)", "AP50@B", "labels saved"]))
    if payload.get("auto_check"):
        lines += ["", "auto vs the best fixed strategy by mean AUC of AP50 (paired by seed: auto - best, 95 % interval):", "",
                  format_table(payload["auto_check"], list(payload["auto_check"][0]))]
    lines += ["", "AP50 per cycle, mean [95 % interval] over runs (a run: one seed on one machine):", "",
              format_table([{**r, "AP50": _interval(r["AP50_mean"], r["AP50_low"], r["AP50_high"]).replace("+", "")}
                            for r in payload["curves"]], ["pool", "strategy", "cycle", "labeled", "pct", "seeds", "AP50"],
                           ["pool", "strategy", "cycle", "labeled", "pct", "runs", "AP50"]),
              "", "Stage costs:", "",
              format_table([{"stage": k, **v} for k, v in payload["stage_timings"].items()], ["stage", "runs", "reused", "seconds"])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def machine_id(cpuinfo: str | None = None, capability: str | None = None) -> str:
    """The processor records are tagged with (``run_key``): the GPU when there is one, else the CPU.

    A CPU is its model name plus family / model / stepping and the vector ISA torch dispatches to
    (``AVX2``, ``AVX512``): a hypervisor may name different hosts alike ("AMD EPYC" on a Zen 3 with
    AVX2 and on another host trained different cycle-0 teachers of one seed), and the kernels, hence
    the floats, follow the ISA. ``cpuinfo`` and ``capability`` default to this machine's.
    """
    import torch

    if cpuinfo is None:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or "unknown"
    signature = " ".join(f"{k} {fields[k2]}" for k, k2 in (("family", "cpu family"), ("model", "model"),
                                                            ("stepping", "stepping")) if fields.get(k2))
    details = [x for x in (signature, capability) if x]
    return f"{name} ({', '.join(details)})" if details else name


def settings_of(args) -> dict:
    keys = ("pools", "strategies", "seeds", "pool", "frames", "eval_images", "initial_pct", "budget_pct", "cycles", "height",
            "width", "preset", "backbone_weights", "teacher_iters", "student_iters", "batch_size", "pl_filter", "pl_params",
            "device")
    return {k: getattr(args, k) for k in keys}


def cycle0_spread(records: list[dict]) -> float:
    """Largest difference in cycle-0 AP50 between non-SSL strategies of one pool and seed.

    They share one initial set and one cycle-0 teacher, so anything above 0 means the teacher was
    not reproduced (e.g. records imported from another machine) and pairs carry that noise.
    """
    by: dict = {}
    for r in records:
        if r["cycle"] == 0 and not r["strategy"].endswith("+ssl"):
            by.setdefault((r["pool"], *run_key(r)), []).append(r["AP50"])
    return round(max((max(v) - min(v) for v in by.values()), default=0.0), 6)


def finish(payload: dict, records: list[dict], out: Path, name: str) -> dict:
    """Aggregate ``records`` into ``payload`` and write JSON, CSVs, PNG and Markdown."""
    st = payload["settings"]
    # everything recorded (this invocation's and earlier ones' on the same work folder or imported)
    pools = [p for p in POOLS if any(r["pool"] == p for r in records)]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in records)]
    st.update(pools=pools, strategies=strategies, seeds=sorted({r["seed"] for r in records}))
    curves = curve_table(records)
    payload["cycle0_spread"] = cycle0_spread(records)
    rows = comparisons(records, pools, strategies)
    payload.update(records=records, curves=curves, comparisons=rows, auto_check=best_fixed_check(rows, pools, records))
    out.mkdir(parents=True, exist_ok=True)
    payload["plot"] = str(plot(curves, pools, strategies, out / f"{name}_budget_curve.png").name)
    write_results(name, payload, curves, out)
    with open(out / f"{name}_comparisons.csv", "w") as fh:
        cols = list(rows[0]) if rows else []
        fh.write(",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows))
    (out / f"{name}.md").write_text(markdown(payload))
    return payload


def render(path: Path) -> dict:
    payload = json.loads(path.read_text())
    result = finish(payload, payload["records"], path.parent, path.stem)
    print((path.parent / f"{path.stem}.md").read_text())
    return result


def imported_payload(path: Path | None, args) -> dict:
    """A committed results JSON (its records and commands), refused when its settings differ from this invocation's."""
    if path is None:
        return {}
    payload = json.loads(path.read_text())
    ours, theirs = settings_of(args), payload["settings"]
    differ = [k for k in ours if k not in ("pools", "strategies", "seeds") and theirs.get(k) != ours[k]]
    if differ:
        raise SystemExit(f"--import-records {path}: settings differ from this invocation's: {', '.join(differ)}")
    return payload


def recorded_cycle0(records: list[dict], pool: str, seed: int, machine_id: str) -> float | None:
    """The cycle-0 AP50 of ``pool`` and ``seed`` on this machine in ``records`` (non-SSL arms), or None."""
    values = [r["AP50"] for r in records if r["pool"] == pool and r["cycle"] == 0 and run_key(r) == (seed, machine_id)
              and not r["strategy"].endswith("+ssl")]
    return values[0] if values else None


def finished_strategies(records: list[dict], pool: str, seed: int, cycles: int, machine_id: str) -> list[str]:
    """Strategies with a record for every cycle of ``pool`` and ``seed`` on this machine."""
    seen: dict[str, set] = {}
    for r in records:
        if r["pool"] == pool and run_key(r) == (seed, machine_id):
            seen.setdefault(r["strategy"], set()).add(r["cycle"])
    return [s for s, c in seen.items() if c >= set(range(cycles))]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    started, load0 = time.time(), round(os.getloadavg()[0], 2)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ACTIVEDET_CACHE_DIR", str(args.work / "cache"))
    progress(f"label efficiency: pools {args.pools}, strategies {args.strategies}, seeds {args.seeds}, work {args.work}")
    datasets = make_datasets(args)
    threads = 1 if args.device == "cpu" and args.workers > 1 else max(1, (os.cpu_count() or 1) // max(1, args.workers))
    log_path = args.work / "records.jsonl"
    imported = imported_payload(args.import_records, args)
    done = list(imported.get("records", []))
    here = machine_id()
    done += [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    specs = [{"pool": p, "seed": s, "base": base_experiment(args, p, datasets[p], s), "work": str(args.work / p),
              "strategies": list(args.strategies), "threads": threads, "log": str(log_path),
              "done": finished_strategies(done, p, s, args.cycles, here), "machine": here,
              "cycle0_ap50": recorded_cycle0(done, p, s, here)}
             for s in args.seeds for p in args.pools]
    timings: dict = {}
    jobs_done = [0]

    def collect(res: dict) -> None:
        done.extend(res["records"])
        for stage, t in res["timings"].items():
            agg = timings.setdefault(stage, {"runs": 0, "seconds": 0.0, "reused": 0})
            for k in agg:
                agg[k] += t[k]
        jobs_done[0] += 1
        elapsed = time.time() - started
        eta = elapsed / jobs_done[0] * (len(specs) - jobs_done[0])
        progress(f"job {res['pool']} seed {res['seed']} done in {res['seconds'] / 60:.1f} min: {jobs_done[0]}/{len(specs)} jobs, "
                 f"{60 * jobs_done[0] / max(elapsed, 1e-9):.2f} jobs/min, ETA {eta / 60:.0f} min")

    if args.workers > 1 and len(specs) > 1:
        # SIGTERM (kill, a scheduler's stop) must end the workers too: left running they would go on
        # appending records -- under whatever machine tag this invocation had -- after it is gone
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with mp.get_context("spawn").Pool(min(args.workers, len(specs)), maxtasksperchild=1) as pool:
                for res in pool.imap_unordered(_job_main, specs):
                    collect(res)
        finally:
            signal.signal(signal.SIGTERM, previous)  # main() may run inside a longer process (tests)
    else:
        for spec in specs:
            collect(_job_main(dict(spec)))
    # one record per (pool, seed, machine, strategy, cycle): the newest wins (a re-run recomputes nothing but re-reports)
    latest = {(r["pool"], *run_key(r), r["strategy"], r["cycle"]): r for r in done}
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    earlier = imported.get("commands") or ([imported["command"]] if imported else [])
    payload = {"benchmark": "label_efficiency", "command": command, "commands": [*earlier, command],
               "machine": machine(), "loadavg_1m_at_start": load0, "seconds": round(time.time() - started, 1),
               "settings": settings_of(args), "datasets": datasets, "stage_timings": timings}
    payload = finish(payload, sorted(latest.values(), key=lambda r: (r["pool"], *run_key(r), _order(r["strategy"]), r["cycle"])),
                     args.out, args.name)
    print((args.out / f"{args.name}.md").read_text())
    return payload


if __name__ == "__main__":
    main()
