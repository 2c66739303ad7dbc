"""Label efficiency of the active-learning loop on SynthDrive: budget curves, AUC@B, metric@B.

Runs the loop in-process by calling the stages' ``run(Config)`` (init, train-teacher,
generate-pseudo-labels, train-student-SSL, score-unlabeled, select-batch, oracle, evaluate) --
no KFP -- for these strategies:

=================  ==========================================  ==================================
strategy           acquisition (select-batch)                  model evaluated each cycle
=================  ==========================================  ==================================
random             random                                      supervised teacher
random+ssl         random                                      SSL student (from that teacher)
entropy            topk of entropy (max over boxes)            teacher
inconsistency      topk of flip inconsistency                  teacher
unified            unified (Elezi): top 2B by entropy,         teacher
                   ranked by inconsistency
coreset            k-center greedy on embeddings               teacher
coreset+ssl        k-center greedy                             SSL student
unified+ssl        unified                                     SSL student
=================  ==========================================  ==================================

on two pool variants with the same number of pool images: *redundant* (``--frames`` consecutive
near-duplicate frames per sequence) and *diverse* (one frame per sequence). Every model is
evaluated on one shared held-out set of independent SynthDrive scenes (another seed), so the two
variants' numbers compare. Each seed draws one cycle-0 set (init stage) shared by all strategies.

Work shared where it is the same computation (content-addressed, so sharing is automatic and a
re-run resumes): a model is keyed by its labeled set, its initialisation and its cycle, so the
cycle-0 teacher of a seed is trained once for all strategies, and -- because by default the
acquisition of X+SSL scores the pool with the *teacher* (``--ssl-scoring teacher``) -- X+SSL
selects exactly the batches X selects and reuses X's teachers, adding only pseudo-labels and a
student per cycle. ``--ssl-scoring student`` makes X+SSL score with its student instead (as the
pipeline does; costs a separate chain of teachers per SSL strategy).

Cycle 0 also trains a *supervised control*: the cycle-0 teacher trained ``--student-iters`` more
iterations on the labeled set only, so "student vs supervised" is also compared at equal
training iterations.

    .venv/bin/python benchmarks/label_efficiency.py                  # defaults: see --help
    .venv/bin/python benchmarks/label_efficiency.py --smoke          # 1-2 minute check
    .venv/bin/python benchmarks/label_efficiency.py --device cuda --pool 2000 --initial 100 --budget 100 --cycles 5

Outputs under ``--out`` (default benchmarks/results/): ``label_efficiency[_smoke].json`` / ``.csv``
(per strategy, variant and cycle: labels, % of pool, AP50 and AP mean+-std over seeds, per-seed
values), ``..._summary.csv`` (AUC@B and metric@B per strategy) and ``..._budget_curve.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    auc_at,
    fmt_pm,
    format_table,
    labels_to_reach,
    machine,
    mean_std,
    metric_at,
    progress,
    write_results,
)

VARIANTS = ("redundant", "diverse")


@dataclass(frozen=True)
class Strategy:
    """How one compared strategy selects and which model it reports."""

    select: str
    scores: tuple[str, ...] = ()
    score: str = "entropy"
    ssl: bool = False


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy("random"),
    "random+ssl": Strategy("random", ssl=True),
    "entropy": Strategy("topk", ("entropy",), "entropy"),
    "inconsistency": Strategy("topk", ("inconsistency",), "inconsistency"),
    "unified": Strategy("unified", ("unified",)),
    "coreset": Strategy("coreset", ("embedding",)),
    "coreset+ssl": Strategy("coreset", ("embedding",), ssl=True),
    "unified+ssl": Strategy("unified", ("unified",), ssl=True),
}
CONTROL = "supervised control"


# --------------------------------------------------------------------------- settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one cycle-0 set and training seed each")
    p.add_argument("--pool", type=int, default=120, help="pool images per variant (all in the train split)")
    p.add_argument("--frames", type=int, default=10, help="redundant variant: consecutive frames per sequence")
    p.add_argument("--eval-images", type=int, default=80, help="held-out evaluation images (independent scenes)")
    p.add_argument("--initial", type=int, default=12, help="I: images labeled at cycle 0 (random, per seed)")
    p.add_argument("--budget", type=int, default=12, help="B: images added per cycle")
    p.add_argument("--cycles", type=int, default=3, help="acquisition cycles after cycle 0")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--teacher-iters", type=int, default=300, help="teacher iterations when trained from scratch (cycle 0)")
    p.add_argument("--finetune-iters", type=int, default=50,
                   help="teacher iterations in cycles >= 1 (warm start from the strategy's previous teacher)")
    p.add_argument("--no-warm-start", action="store_true",
                   help="train every cycle's teacher from scratch with --teacher-iters (Elezi; much slower)")
    p.add_argument("--student-iters", type=int, default=50, help="SSL student iterations (from its teacher)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--pl-filter", default="fixed", help="pseudo-label filter")
    p.add_argument("--pl-params", default='{"tau": 0.9}', help="pseudo-label filter parameters (JSON)")
    p.add_argument("--ssl-scoring", choices=("teacher", "student"), default="teacher",
                   help="model that scores the pool for X+SSL strategies (teacher: shares X's work)")
    p.add_argument("--workers", type=int, default=2, help="parallel (variant, seed) jobs, one torch thread each")
    p.add_argument("--at", type=float, nargs="*", default=None, help="B values (%% of pool) for AUC@B / metric@B (default: each cycle's)")
    p.add_argument("--work", type=Path, default=None, help="work folder (default /tmp/activedet-label-efficiency[-smoke]); re-runs resume")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a 1-2 minute check that everything runs")
    p.add_argument("--render", type=Path, default=None,
                   help="only re-render tables, Markdown and plot from this results JSON (no training)")
    args = p.parse_args(argv)
    if args.smoke:
        args.pool, args.frames, args.eval_images, args.initial, args.budget, args.cycles = 24, 6, 12, 6, 6, 1
        args.teacher_iters, args.finetune_iters, args.student_iters, args.batch_size = 6, 3, 3, 4
        args.seeds = args.seeds[:2] if len(args.seeds) > 2 else args.seeds
    if args.initial + args.cycles * args.budget > args.pool:
        p.error(f"--initial + --cycles * --budget = {args.initial + args.cycles * args.budget} exceeds --pool {args.pool}")
    if args.pool % args.frames:
        p.error("--pool must be a multiple of --frames")
    if args.name is None:
        args.name = "label_efficiency" + ("_cuda" if args.device == "cuda" else "") + ("_smoke" if args.smoke else "")
    if args.work is None:
        args.work = Path("/tmp") / ("activedet-" + args.name.replace("_", "-"))
    json.loads(args.pl_params)
    return args


# --------------------------------------------------------------------------- one (variant, seed) job


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Job:
    """The whole AL loop of every strategy for one variant and seed."""

    variant: str
    seed: int
    dataset: str
    eval_dataset: str
    work: str
    settings: dict
    timings: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)

    # -- bookkeeping
    def _timed(self, stage: str, label: str, uri: str, fn):
        """Run ``fn`` unless ``uri`` already holds a committed output (then reuse it)."""
        from activedet import store

        if store.is_committed(uri):
            self.timings.setdefault(stage, {"runs": 0, "seconds": 0.0, "reused": 0})["reused"] += 1
            return
        t0 = time.perf_counter()
        fn()
        secs = time.perf_counter() - t0
        t = self.timings.setdefault(stage, {"runs": 0, "seconds": 0.0, "reused": 0})
        t["runs"] += 1
        t["seconds"] += secs
        progress(f"{self.variant} seed {self.seed}: {label}: {stage} {secs:.1f} s")

    def _path(self, *parts: str) -> str:
        return str(Path(self.work, *parts))

    # -- stages
    def teacher(self, ledger: str, digest: str, init: str | None, init_key: str, cycle: int, iterations: int) -> tuple[str, str]:
        from activedet.stages import train_teacher

        s = self.settings
        key = _key("teacher", digest, init_key, cycle, iterations)
        uri = self._path("teachers", key)
        cfg = train_teacher.Config(
            dataset_uri=self.dataset, ledger_uri=ledger, output_uri=uri, preset=s["preset"], init_checkpoint_uri=init,
            iterations=iterations, batch_size=s["batch_size"], lr=s["lr"], warmup_iters=min(50, iterations // 5),
            seed=self.seed + cycle, device=s["device"], checkpoint_every=0,
        )
        self._timed("train-teacher", f"cycle {cycle} teacher {key}", uri, lambda: train_teacher.run(cfg))
        return uri, key

    def student(self, teacher: str, tkey: str, ledger: str, cycle: int) -> tuple[str, str]:
        from activedet.stages import generate_pseudo_labels, train_student_ssl

        s = self.settings
        pl = self._path("pseudo_labels", tkey)
        pcfg = generate_pseudo_labels.Config(
            teacher_checkpoint_uri=teacher, dataset_uri=self.dataset, ledger_uri=ledger, output_uri=pl,
            filter=s["pl_filter"], filter_params=json.loads(s["pl_params"]), device=s["device"], seed=self.seed + cycle,
        )
        self._timed("generate-pseudo-labels", f"cycle {cycle} pseudo-labels {tkey}", pl, lambda: generate_pseudo_labels.run(pcfg))
        key = _key("student", tkey, s["student_iters"])
        uri = self._path("students", key)
        scfg = train_student_ssl.Config(
            teacher_checkpoint_uri=teacher, dataset_uri=self.dataset, ledger_uri=ledger, pseudo_labels_uri=pl,
            output_uri=uri, iterations=s["student_iters"], batch_size=s["batch_size"], lr=s["lr"],
            warmup_iters=min(50, s["student_iters"] // 5), seed=self.seed + cycle, device=s["device"], checkpoint_every=0,
        )
        self._timed("train-student-ssl", f"cycle {cycle} student {key}", uri, lambda: train_student_ssl.run(scfg))
        return uri, key

    def evaluate(self, model: str, mkey: str, label: str) -> dict:
        from activedet import store
        from activedet.stages import evaluate

        if mkey in self.evals:
            return self.evals[mkey]
        uri = self._path("evals", mkey)
        cfg = evaluate.Config(dataset_uri=self.eval_dataset, split="train", checkpoint_uri=model, output_uri=uri,
                              device=self.settings["device"], rare_k=0)
        self._timed("evaluate", label, uri, lambda: evaluate.run(cfg))
        m = store.read_output_json(uri, "metrics.json")["metrics"]
        self.evals[mkey] = {"AP": 100 * (m.get("AP") or 0.0), "AP50": 100 * (m.get("AP50") or 0.0)}
        return self.evals[mkey]

    def score(self, model: str, mkey: str, ledger: str, lkey: str, scores: list[str], include_labeled: bool, cycle: int) -> str:
        from activedet.stages import score_unlabeled

        key = _key("scores", mkey, lkey, sorted(scores), include_labeled)
        uri = self._path("scores", key)
        cfg = score_unlabeled.Config(
            checkpoint_uri=model, dataset_uri=self.dataset, ledger_uri=ledger, output_uri=uri, scores=sorted(scores),
            include_labeled=include_labeled, batch_size=self.settings["batch_size"], device=self.settings["device"],
        )
        self._timed("score-unlabeled", f"cycle {cycle} scores {'+'.join(sorted(scores))}", uri, lambda: score_unlabeled.run(cfg))
        return uri

    def select(self, name: str, strat: Strategy, ledger: str, scores_uri: str | None, cycle: int) -> str:
        from activedet.stages import oracle, select_batch

        sel = self._path("strategies", name.replace("+", "_"), f"selection-{cycle:02d}")
        nxt = self._path("strategies", name.replace("+", "_"), f"ledger-{cycle:02d}")
        scfg = select_batch.Config(
            dataset_uri=self.dataset, ledger_uri=ledger, output_uri=sel, strategy=strat.select, budget=self.settings["budget"],
            scores_uri=scores_uri, score=strat.score, seed=self.seed, cycle=cycle,
            device="cuda" if self.settings["device"] == "cuda" else "cpu",
        )
        ocfg = oracle.Config(ledger_uri=sel, selection_uri=sel, output_uri=nxt)

        def both():
            select_batch.run(scfg)
            oracle.run(ocfg)

        self._timed("select-batch+oracle", f"cycle {cycle} {name} selection", nxt, both)
        return nxt

    # -- the loop
    def run(self) -> list[dict]:
        from activedet.al import ledger as ledger_mod
        from activedet.stages import init

        s = self.settings
        warm = not s["no_warm_start"]
        led0 = self._path("ledger-00")
        self._timed("init", "cycle 0 init", led0, lambda: init.run(init.Config(
            dataset_uri=self.dataset, output_uri=led0, initial_size=s["initial"], seed=self.seed)))
        names = list(s["strategies"])
        state = {n: {"ledger": led0, "teacher": None, "tkey": "scratch"} for n in names}
        records: list[dict] = []
        for cycle in range(s["cycles"] + 1):
            models: dict[str, tuple[str, str]] = {}
            for n in names:
                st, strat = state[n], STRATEGIES[n]
                table, _ = ledger_mod.read_ledger(st["ledger"])
                labeled = sorted(ledger_mod.ids_in_state(table, "labeled"))
                digest = _key(labeled)
                scratch = cycle == 0 or not warm
                init_uri, init_key = (None, "scratch") if scratch else (st["teacher"], st["tkey"])
                iters = s["teacher_iters"] if scratch else s["finetune_iters"]
                teacher, tkey = self.teacher(st["ledger"], digest, init_uri, init_key, cycle, iters)
                st.update(teacher=teacher, tkey=tkey, labeled=len(labeled), digest=digest)
                model, mkey = (teacher, tkey)
                if strat.ssl:
                    model, mkey = self.student(teacher, tkey, st["ledger"], cycle)
                models[n] = (model, mkey)
                m = self.evaluate(model, mkey, f"cycle {cycle} {n} eval")
                records.append({"variant": self.variant, "seed": self.seed, "strategy": n, "cycle": cycle,
                                "labeled": len(labeled), "pct": 100.0 * len(labeled) / s["pool"], **m, "model": mkey})
                progress(f"{self.variant} seed {self.seed}: cycle {cycle} {n:13s} {len(labeled):4d} labels  "
                         f"AP50 {m['AP50']:5.1f}  AP {m['AP']:5.1f}")
            if cycle == 0 and any(STRATEGIES[n].ssl for n in names):
                records.append(self._control(state[names[0]], cycle))
            if cycle == s["cycles"]:
                break
            self._acquire(names, state, models, cycle)
        return records

    def _control(self, st: dict, cycle: int) -> dict:
        """The cycle-0 teacher trained ``student_iters`` more on labeled data only."""
        uri, key = self.teacher(st["ledger"], st["digest"], st["teacher"], st["tkey"], cycle, self.settings["student_iters"])
        m = self.evaluate(uri, key, f"cycle {cycle} {CONTROL} eval")
        progress(f"{self.variant} seed {self.seed}: cycle {cycle} {CONTROL}: AP50 {m['AP50']:5.1f}  AP {m['AP']:5.1f}")
        return {"variant": self.variant, "seed": self.seed, "strategy": CONTROL, "cycle": cycle, "labeled": st["labeled"],
                "pct": 100.0 * st["labeled"] / self.settings["pool"], **m, "model": key}

    def _acquire(self, names: list[str], state: dict, models: dict, cycle: int) -> None:
        """Score each distinct (model, ledger) once with the union of what its strategies need."""
        groups: dict[tuple[str, str], dict] = {}
        for n in names:
            strat = STRATEGIES[n]
            if not strat.scores:
                continue
            use_student = strat.ssl and self.settings["ssl_scoring"] == "student"
            model, mkey = models[n] if use_student else (state[n]["teacher"], state[n]["tkey"])
            g = groups.setdefault((mkey, state[n]["digest"]), {"model": model, "ledger": state[n]["ledger"],
                                                                 "scores": set(), "labeled": False, "members": []})
            g["scores"].update(strat.scores)
            g["labeled"] |= strat.select == "coreset"
            g["members"].append(n)
        scores_of: dict[str, str] = {}
        for (mkey, lkey), g in groups.items():
            uri = self.score(g["model"], mkey, g["ledger"], lkey, sorted(g["scores"]), g["labeled"], cycle)
            for n in g["members"]:
                scores_of[n] = uri
        for n in names:
            state[n]["ledger"] = self.select(n, STRATEGIES[n], state[n]["ledger"], scores_of.get(n), cycle + 1)


def _job_main(spec: dict) -> dict:
    """Worker entry point: one (variant, seed) job with one torch thread."""
    import torch

    torch.set_num_threads(spec.pop("threads"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job = Job(**spec)
    t0 = time.perf_counter()
    records = job.run()
    return {"variant": job.variant, "seed": job.seed, "records": records, "timings": job.timings,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- datasets


def make_datasets(args) -> dict[str, str]:
    """Generate the pool datasets (one per variant) and the shared evaluation set."""
    from activedet import store
    from activedet.data.synth import generate_synthdrive

    out = {}
    specs = {
        "redundant": {"sequences": args.pool // args.frames, "frames": args.frames, "seed": 0},
        "diverse": {"sequences": args.pool, "frames": 1, "seed": 0},
        "eval": {"sequences": args.eval_images, "frames": 1, "seed": 1000},
    }
    for name, spec in specs.items():
        if name != "eval" and name not in args.variants:
            continue
        uri = str(args.work / "datasets" / f"{name}-{_key(spec)}")
        if not store.is_committed(uri):
            t0 = time.perf_counter()
            generate_synthdrive(uri, val_fraction=0.0, test_fraction=0.0, **spec)
            progress(f"dataset {name}: {spec} generated in {time.perf_counter() - t0:.1f} s")
        out[name] = uri
    return out


# --------------------------------------------------------------------------- aggregation


def aggregate(records: list[dict], args) -> tuple[list[dict], list[dict], dict]:
    """Per (variant, strategy, cycle) mean +- std; per (variant, strategy) AUC@B and metric@B; claims."""
    by: dict[tuple, list[dict]] = {}
    for r in records:
        by.setdefault((r["variant"], r["strategy"], r["cycle"]), []).append(r)
    curve_rows = []
    for (variant, strategy, cycle), rs in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]), kv[0][2])):
        ap50 = mean_std([r["AP50"] for r in rs])
        ap = mean_std([r["AP"] for r in rs])
        curve_rows.append({
            "variant": variant, "strategy": strategy, "cycle": cycle, "labeled": rs[0]["labeled"], "pct": rs[0]["pct"],
            "AP50_mean": ap50[0], "AP50_std": ap50[1], "AP_mean": ap[0], "AP_std": ap[1], "seeds": len(rs),
            "AP50": fmt_pm(*ap50), "AP": fmt_pm(*ap),
            "AP50_per_seed": {r["seed"]: round(r["AP50"], 2) for r in rs}, "AP_per_seed": {r["seed"]: round(r["AP"], 2) for r in rs},
        })
    budgets = sorted({r["pct"] for r in records if r["strategy"] != CONTROL})
    ats = args.at if args.at else budgets[1:]
    summary = []
    for variant in args.variants:
        for strategy in args.strategies:
            per_seed = _per_seed_curves(records, variant, strategy)
            row = {"variant": variant, "strategy": strategy}
            for metric in ("AP50", "AP"):
                for b in ats:
                    aucs = [auc_at(c["pct"], c[metric], b) for c in per_seed.values()]
                    vals = [metric_at(c["pct"], c[metric], b) for c in per_seed.values()]
                    row[f"AUC@{b:g}_{metric}"] = fmt_pm(*mean_std(aucs))
                    row[f"{metric}@{b:g}"] = fmt_pm(*mean_std(vals))
                    row[f"_auc@{b:g}_{metric}"] = mean_std(aucs)
                    row[f"_{metric}@{b:g}"] = mean_std(vals)
            summary.append(row)
    return curve_rows, summary, claims(records, args)


def _order(strategy: str) -> int:
    names = [*STRATEGIES, CONTROL]
    return names.index(strategy) if strategy in names else len(names)


def _per_seed_curves(records, variant, strategy) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in sorted(records, key=lambda r: r["cycle"]):
        if r["variant"] == variant and r["strategy"] == strategy:
            c = out.setdefault(r["seed"], {"pct": [], "labeled": [], "AP50": [], "AP": []})
            for k in ("pct", "labeled", "AP50", "AP"):
                c[k].append(r[k])
    return out


def _paired(records, variant, a, b, metric="AP50", cycles=None) -> list[float]:
    """Per seed and cycle differences ``a - b`` (same labels: same cycle)."""
    idx = {(r["strategy"], r["seed"], r["cycle"]): r[metric] for r in records if r["variant"] == variant}
    out = []
    for (s, seed, cycle), v in idx.items():
        if s == a and (cycles is None or cycle in cycles) and (b, seed, cycle) in idx:
            out.append(v - idx[(b, seed, cycle)])
    return out


def claims(records: list[dict], args) -> dict:
    """The issue's four questions, answered from the records (AP50 unless stated)."""
    out: dict = {}
    last = args.cycles
    for variant in args.variants:
        c: dict = {}
        if {"random", "random+ssl"} <= set(args.strategies):
            d = _paired(records, variant, "random+ssl", "random", cycles={0})
            dc = _paired(records, variant, "random+ssl", CONTROL, cycles={0})
            da = _paired(records, variant, "random+ssl", "random", "AP", cycles={0})
            c["ssl_beats_supervised_at_cycle0"] = {
                "student_minus_teacher_AP50": mean_std(d), "student_minus_teacher_AP": mean_std(da),
                "student_minus_control_AP50": mean_std(dc), "seeds_student_better": sum(x > 0 for x in d), "seeds": len(d),
                "holds": bool(d) and mean_std(d)[0] > 0,
                "holds_vs_equal_iterations_control": bool(dc) and mean_std(dc)[0] > 0,
            }
        if {"unified", "random"} <= set(args.strategies):
            d = _paired(records, variant, "unified", "random", cycles=set(range(1, last + 1)))
            wins = sum(x > 0 for x in d)
            c["unified_beats_random_at_equal_labels"] = {
                "unified_minus_random_AP50_cycles>=1": mean_std(d), "wins": wins, "comparisons": len(d),
                "holds": bool(d) and mean_std(d)[0] > 0,
            }
        if {"coreset", "entropy"} <= set(args.strategies):
            d = _paired(records, variant, "coreset", "entropy", cycles=set(range(1, last + 1)))
            auc = {s: [auc_at(cv["pct"], cv["AP50"]) for cv in _per_seed_curves(records, variant, s).values()]
                   for s in ("coreset", "entropy")}
            c["coreset_ge_entropy"] = {
                "coreset_minus_entropy_AP50_cycles>=1": mean_std(d), "wins": sum(x > 0 for x in d), "comparisons": len(d),
                "AUC_coreset": mean_std(auc["coreset"]),
                "AUC_entropy": mean_std(auc["entropy"]), "holds": bool(d) and mean_std(d)[0] >= 0,
            }
        if {"unified+ssl", "random"} <= set(args.strategies):
            rnd = _per_seed_curves(records, variant, "random")
            uni = _per_seed_curves(records, variant, "unified+ssl")
            if rnd and uni:
                labels = next(iter(rnd.values()))["labeled"]
                r_mean = [mean_std([cv["AP50"][i] for cv in rnd.values()])[0] for i in range(len(labels))]
                u_mean = [mean_std([cv["AP50"][i] for cv in uni.values()])[0] for i in range(len(labels))]
                target = r_mean[-1]
                reach = labels_to_reach(labels, u_mean, target)
                per_seed = {s: labels_to_reach(uni[s]["labeled"], uni[s]["AP50"], rnd[s]["AP50"][-1]) for s in rnd if s in uni}
                d = _paired(records, variant, "unified+ssl", "random", cycles=set(range(1, last + 1)))
                c["unified_ssl_reaches_random_final"] = {
                    "unified_ssl_minus_random_AP50_cycles>=1": mean_std(d), "wins": sum(x > 0 for x in d),
                    "random_final_AP50": target, "random_final_labels": labels[-1], "unified_ssl_AP50_curve": u_mean,
                    "labels_needed_mean_curve": reach, "fewer_labels": labels[-1] - reach if reach == reach else None,
                    "labels_needed_per_seed": per_seed, "holds": reach == reach and reach < labels[-1],
                }
        out[variant] = c
    return out


# --------------------------------------------------------------------------- plot


def plot(curve_rows: list[dict], args, path: Path) -> Path:
    from activedet.plots import save_png, subplots

    fig, axes = subplots(1, len(args.variants), figsize=(6.5 * len(args.variants), 4.8), squeeze=False)
    styles = {n: ("--" if STRATEGIES[n].ssl else "-") for n in STRATEGIES}
    for ax, variant in zip(axes[0], args.variants, strict=True):
        for strategy in args.strategies:
            rows = [r for r in curve_rows if r["variant"] == variant and r["strategy"] == strategy]
            if not rows:
                continue
            x = [r["pct"] for r in rows]
            y = np.array([r["AP50_mean"] for r in rows])
            e = np.array([r["AP50_std"] for r in rows])
            line, = ax.plot(x, y, styles.get(strategy, "-"), marker="o", ms=3, label=strategy)
            ax.fill_between(x, y - e, y + e, color=line.get_color(), alpha=0.12)
        ctrl = [r for r in curve_rows if r["variant"] == variant and r["strategy"] == CONTROL]
        if ctrl:
            ax.errorbar([ctrl[0]["pct"]], [ctrl[0]["AP50_mean"]], yerr=[ctrl[0]["AP50_std"]], fmt="kx", label=CONTROL)
        ax.set_title(f"SynthDrive {variant} pool ({args.pool} images), {len(args.seeds)} seeds")
        ax.set_xlabel("% of pool labeled")
        ax.set_ylabel("AP50 on held-out set (mean +- std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path, dpi=110)
    return path


# --------------------------------------------------------------------------- main


def settings_of(args) -> dict:
    keys = ("device", "strategies", "pool", "initial", "budget", "cycles", "preset", "teacher_iters", "finetune_iters",
            "no_warm_start", "student_iters", "batch_size", "lr", "pl_filter", "pl_params", "ssl_scoring")
    return {k: getattr(args, k) for k in keys}


def markdown(payload: dict) -> str:
    """The results as Markdown: settings, per-cycle table, AUC@B / metric@B table, claims."""
    st = payload["settings"]
    lines = [
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine'].get('cpu_model')} ({payload['machine'].get('cpus')} CPUs), "
        f"torch {payload['machine'].get('torch')}, CUDA: {payload['machine'].get('cuda')}; "
        f"load average at start {payload.get('loadavg_1m_at_start')}; wall time {payload['seconds'] / 60:.1f} min  ",
        f"Pool {st['pool']} images per variant (redundant: {st['frames']} frames per sequence; diverse: 1), "
        f"I = {st['initial']}, B = {st['budget']}, {st['cycles']} cycles, seeds {st['seeds']}, preset {st['preset']}, "
        f"teacher {st['teacher_iters']} it (cycle 0), {'warm-start fine-tune ' + str(st['finetune_iters']) + ' it' if not st['no_warm_start'] else 'from scratch'} "
        f"(cycles >= 1), student {st['student_iters']} it, batch {st['batch_size']}, pseudo-labels {st['pl_filter']} {st['pl_params']}, "
        f"X+SSL scores with the {st['ssl_scoring']}; evaluation: {st['eval_images']} held-out independent frames.",
        "",
        *([f"Computed over {len(payload['invocations'])} invocations on the same --work folder: "
           + "; ".join(f"{i['command']}: {i['seconds'] / 60:.1f} min at load {i['loadavg_1m_at_start']}" for i in payload["invocations"]),
           ""] if payload.get("invocations") else []),
        "AP50 / AP (COCO, x100) per cycle, mean +- std over seeds:",
        "",
        format_table(payload["curves"], ["variant", "strategy", "cycle", "labeled", "pct", "AP50", "AP"],
                     ["variant", "strategy", "cycle", "labels", "% pool", "AP50", "AP"]),
        "",
        "AUC@B (trapezoid over % of pool labeled, from the cycle-0 point; metric x percentage points) and metric@B:",
        "",
    ]
    summary = payload["summary"]
    if summary:
        lines.append(format_table(summary, list(summary[0])))
    lines += ["", "Stage costs (all jobs):", "",
              format_table([{"stage": k, **v} for k, v in payload["stage_timings"].items()], ["stage", "runs", "reused", "seconds"]),
              "", "Claims (AP50 unless stated; differences are paired per seed and cycle):", ""]
    for variant, cl in payload["claims"].items():
        for name, c in cl.items():
            lines.append(f"- **{variant} / {name}**: holds = {c.get('holds')}; " + ", ".join(
                f"{k} = {_short(v, k)}" for k, v in c.items() if k != "holds"))
    return "\n".join(lines) + "\n"


def _short(v, key: str = ""):
    if "curve" not in key and isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return fmt_pm(v[0], v[1], 2)
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.1f}" if isinstance(x, float) else str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def render(path: Path, args) -> dict:
    """Re-aggregate, re-plot and re-write the Markdown of an existing results JSON."""
    payload = json.loads(path.read_text())
    st = payload["settings"]
    for k in ("variants", "strategies", "seeds", "pool", "cycles"):
        setattr(args, k, st[k])
    curve_rows, summary, answers = aggregate(payload["records"], args)
    payload.update(curves=curve_rows, summary=[{k: v for k, v in r.items() if not k.startswith("_")} for r in summary],
                   claims=answers)
    png = plot(curve_rows, args, path.with_name(path.stem + "_budget_curve.png"))
    payload["plot"] = str(png)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(payload))
    print(md.read_text())
    return payload


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args)
    started = time.time()
    load0 = round(os.getloadavg()[0], 2)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ACTIVEDET_CACHE_DIR", str(args.work / "cache"))
    progress(f"label efficiency: variants {args.variants}, {len(args.strategies)} strategies, seeds {args.seeds}, "
             f"pool {args.pool}, I={args.initial}, B={args.budget}, {args.cycles} cycles, work {args.work}")
    datasets = make_datasets(args)
    settings = settings_of(args)
    threads = 1 if args.device == "cpu" and args.workers > 1 else max(1, (os.cpu_count() or 1) // max(1, args.workers))
    specs = [
        {"variant": v, "seed": s, "dataset": datasets[v], "eval_dataset": datasets["eval"],
         "work": str(args.work / v / f"seed-{s}"), "settings": settings, "threads": threads}
        for s in args.seeds for v in args.variants
    ]
    if args.workers > 1 and len(specs) > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(args.workers, len(specs)), maxtasksperchild=1) as pool:
            results = pool.map(_job_main, specs, chunksize=1)
    else:
        results = [_job_main(dict(spec)) for spec in specs]
    records = [r for res in results for r in res["records"]]
    timings: dict = {}
    for res in results:
        for stage, t in res["timings"].items():
            agg = timings.setdefault(stage, {"runs": 0, "seconds": 0.0, "reused": 0})
            for k in agg:
                agg[k] += t[k]
    curve_rows, summary, answers = aggregate(records, args)
    args.out.mkdir(parents=True, exist_ok=True)
    png = plot(curve_rows, args, args.out / f"{args.name}_budget_curve.png")
    payload = {
        "benchmark": "label_efficiency", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(), "loadavg_1m_at_start": load0, "seconds": round(time.time() - started, 1),
        "settings": {**settings, "variants": args.variants, "seeds": args.seeds, "frames": args.frames,
                     "eval_images": args.eval_images, "workers": args.workers},
        "datasets": datasets, "stage_timings": timings, "job_seconds": {f"{r['variant']}/{r['seed']}": round(r["seconds"], 1) for r in results},
        "curves": curve_rows, "summary": [{k: v for k, v in r.items() if not k.startswith("_")} for r in summary],
        "claims": answers, "records": records, "plot": str(png),
    }
    jpath, cpath = write_results(args.name, payload, [{k: v for k, v in r.items() if not k.endswith("per_seed")} for r in curve_rows], args.out)
    spath = args.out / f"{args.name}_summary.csv"
    _write_summary_csv(summary, spath)
    (args.out / f"{args.name}.md").write_text(markdown(payload))
    print()
    print(format_table(curve_rows, ["variant", "strategy", "cycle", "labeled", "pct", "AP50", "AP"],
                       ["variant", "strategy", "cycle", "labels", "% pool", "AP50 (mean+-std)", "AP (mean+-std)"]))
    print()
    cols = [k for k in summary[0] if not k.startswith("_")] if summary else []
    print(format_table(summary, cols))
    print()
    print(format_table([{"stage": k, **v} for k, v in timings.items()], ["stage", "runs", "reused", "seconds"]))
    print()
    print(json.dumps(answers, indent=1, default=float))
    print(f"\n{len(records)} evaluations in {payload['seconds']:.0f} s -> {jpath}, {cpath}, {spath}, {png}")
    return payload


def _write_summary_csv(summary: list[dict], path: Path) -> None:
    import csv

    cols = [k for k in summary[0] if not k.startswith("_")] if summary else []
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary)


if __name__ == "__main__":
    main()
