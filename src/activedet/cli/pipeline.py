"""Pipeline commands: ``activedet validate``, ``run``, ``compile``, ``submit`` and ``demo``.

One experiment YAML drives them all (see ``configs/``): ``validate`` checks it and shows the
config of every stage (the others validate first, the same way), ``run`` executes the KFP pipeline locally
through kfp.local, ``compile`` writes the pipeline YAML for Kubeflow Pipelines, ``submit`` sends it
to a KFP API server, ``demo`` runs ``configs/demo.yaml`` on a freshly generated SynthDrive set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from activedet.errors import ConfigError

DEMO_CONFIG = "configs/demo.yaml"


def _load(path: str, **overrides):
    """The experiment, validated as ``activedet validate`` does (every stage config of every cycle)."""
    from activedet.pipeline.plan import load_experiment

    return load_experiment(path, **overrides)


def _validate(args: argparse.Namespace) -> int:
    """Check CONFIG as compile/submit/run/schedule do, and print each stage's resolved config."""
    import json

    from activedet.pipeline import plan
    from activedet.pipeline.dag import default_run_root

    exp = _load(args.config)
    resolved = plan.resolve(exp, default_run_root(exp))
    if args.json:
        sys.stdout.write(json.dumps({"experiment": exp.model_dump(mode="json"), "stages": resolved}, indent=2) + "\n")
        return 0
    sys.stdout.write(f"{args.config}: valid ({exp.cycles} cycle(s), I={exp.initial_size}, B={exp.budget})\n")
    for group, configs in resolved.items():
        if group == "init":
            configs = {"init": configs}
        sys.stdout.write(f"{group}:\n")
        for stage, config in configs.items():
            shown = ", ".join(f"{k}={v}" for k, v in config.items() if not k.endswith("_uri") and k != "shard_uris")
            sys.stdout.write(f"  {stage}: {shown}\n")
    return 0


def _print_summary(outcome) -> None:
    from activedet.pipeline import report

    out = sys.stdout
    out.write(f"\nactivedet: run '{outcome.experiment.name}' finished: {len(outcome.rows)} cycle(s)\n\n")
    out.write(report.format_table(outcome.rows) + "\n\n")
    if outcome.rows and outcome.rows[-1].get("reason"):
        out.write(f"stopped: {outcome.rows[-1]['reason']}\n")
    strategy = outcome.experiment.acquisition.strategy
    for arm, b in outcome.baselines.items():
        out.write(f"\nbaseline arm '{arm}' (same cycle 0):\n\n" + report.format_table(b["cycles"]) + "\n\n")
        vs = b.get("vs") or {}
        if vs:
            out.write(f"{strategy} vs {arm}: AUC@B of AP50 {vs.get('auc_diff.AP50', float('nan')):+.3f} (AP50 x % of pool), "
                      f"labels saved at {arm}'s final AP50: {vs.get('labels_saved.AP50', float('nan')):+.0f} "
                      "(this run only: one seed decides nothing; benchmarks/label_efficiency.py gives intervals)\n")
    out.write(f"outputs:      {outcome.run_root}\n")
    if outcome.budget_curve:
        out.write(f"budget curve: {outcome.budget_curve}\n")
    uri = outcome.tracking_uri or ""
    if uri.startswith("sqlite:"):
        out.write(f"MLflow UI:    mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)\n")
    elif uri:
        out.write(f"MLflow:       {uri} (experiment '{outcome.experiment.mlflow.experiment}')\n")


def _run(args: argparse.Namespace) -> int:
    from activedet.pipeline.local import run_local

    exp = _load(args.config, cycles=args.cycles or None)
    outcome = run_local(exp, args.run_dir, verbose=args.verbose)
    _print_summary(outcome)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if not Path(args.config).is_file():
        raise ConfigError(f"demo config not found: {args.config} (run from the repository root or pass --config)")
    return _run(args)


def _compile(args: argparse.Namespace) -> int:
    from activedet.pipeline.dag import compile_pipeline

    exp = _load(args.config)
    path = compile_pipeline(exp, args.output, platform=not args.local)
    size = Path(path).stat().st_size
    sys.stdout.write(f"wrote {path} ({size / 1024:.0f} KiB, {exp.cycles} cycles)\n")
    return 0


def _submit(args: argparse.Namespace) -> int:
    import tempfile

    from activedet import store
    from activedet.ops import kfp_api
    from activedet.pipeline.dag import compile_pipeline

    exp = _load(args.config)
    if not exp.store_root:
        raise ConfigError(f"{args.config}: store_root is required to submit (an s3:// prefix the cluster can reach)")
    run_name = args.run_name or f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_root = store.join(exp.store_root, run_name)
    client = kfp_api.connect(args.host, namespace=args.namespace)  # quick probe before compiling
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(exp, str(Path(tmp) / "pipeline.yaml"))
        run = client.create_run_from_pipeline_package(
            path,
            arguments={"experiment": exp.to_json(), "run_root": run_root},
            run_name=run_name,
            experiment_name=args.experiment or exp.mlflow.experiment,
            namespace=args.namespace,
            service_account=exp.kubernetes.service_account,
        )
    run_id = kfp_api.require(getattr(run, "run_id", None), args.host, "create run")
    sys.stdout.write(f"submitted run {run_id} ({run_name}); outputs under {run_root}\n")
    return 0


def register(sub) -> None:
    """Add ``run``, ``compile``, ``submit`` and ``demo`` to the top-level parser."""
    p = sub.add_parser("run", help="run the active-learning pipeline locally (kfp.local)", description=_run.__doc__ or __doc__)
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--run-dir", help="directory for the store, KFP outputs and mlflow.db (default runs/<name>-<time>)")
    p.add_argument("--cycles", type=int, help="override the number of cycles")
    p.add_argument("-v", "--verbose", action="store_true", help="show kfp.local's full task logs (always in <run dir>/pipeline.log)")
    p.set_defaults(func=_run)

    p = sub.add_parser("validate", help="check an experiment config (every stage of every cycle) and show the stage configs")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--json", action="store_true", help="print the experiment and the resolved stage configs as JSON")
    p.set_defaults(func=_validate)

    p = sub.add_parser("compile", help="compile the pipeline to KFP YAML for a cluster")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML (default pipeline.yaml)")
    p.add_argument("--local", action="store_true",
                   help="no cluster settings (node selector, GPUs, secrets) and any store: for kfp.local or inspection")
    p.set_defaults(func=_compile)

    p = sub.add_parser("submit", help="compile and submit the pipeline to a Kubeflow Pipelines server")
    p.add_argument("config", help="experiment YAML (store_root must be set)")
    p.add_argument("--host", required=True, help="KFP API server URL")
    p.add_argument("--experiment", help="KFP experiment name (default: the MLflow experiment name)")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace (multi-user KFP)")
    p.add_argument("--run-name", help="run name (default <name>-<time>); outputs go to <store_root>/<run name>")
    p.set_defaults(func=_submit)

    p = sub.add_parser("demo", help="run configs/demo.yaml locally on a freshly generated SynthDrive set")
    p.add_argument("--config", default=DEMO_CONFIG, help=f"experiment YAML (default {DEMO_CONFIG})")
    p.add_argument("--run-dir", help="run directory (default runs/<name>-<time>)")
    p.add_argument("--cycles", type=int, help="override the number of cycles")
    p.add_argument("-v", "--verbose", action="store_true", help="show kfp.local's full task logs (always in <run dir>/pipeline.log)")
    p.set_defaults(func=_demo)
