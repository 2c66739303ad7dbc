"""Pipeline commands: ``activedet run``, ``compile``, ``submit`` and ``demo``.

One experiment YAML drives all four (see ``configs/``): ``run`` executes the KFP pipeline locally
through kfp.local, ``compile`` writes the pipeline YAML for Kubeflow Pipelines, ``submit`` sends it
to a KFP API server, ``demo`` runs ``configs/demo.yaml`` on a freshly generated SynthDrive set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from activedet.errors import ActivedetError, ConfigError

DEMO_CONFIG = "configs/demo.yaml"


def _load(path: str):
    from activedet.pipeline.experiment import load_experiment

    return load_experiment(path)


def _print_summary(outcome) -> None:
    from activedet.pipeline import report

    out = sys.stdout
    out.write(f"\nactivedet: run '{outcome.experiment.name}' finished: {len(outcome.rows)} cycle(s)\n\n")
    out.write(report.format_table(outcome.rows) + "\n\n")
    if outcome.rows and outcome.rows[-1].get("reason"):
        out.write(f"stopped: {outcome.rows[-1]['reason']}\n")
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

    exp = _load(args.config)
    if args.cycles:
        exp = exp.model_copy(update={"cycles": args.cycles})
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
    path = compile_pipeline(exp, args.output)
    size = Path(path).stat().st_size
    sys.stdout.write(f"wrote {path} ({size / 1024:.0f} KiB, {exp.cycles} cycles)\n")
    return 0


def _submit(args: argparse.Namespace) -> int:
    import tempfile

    import kfp

    from activedet import store
    from activedet.pipeline.dag import compile_pipeline

    exp = _load(args.config)
    if not exp.store_root:
        raise ConfigError(f"{args.config}: store_root is required to submit (an s3:// prefix the cluster can reach)")
    run_name = args.run_name or f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_root = store.join(exp.store_root, run_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(exp, str(Path(tmp) / "pipeline.yaml"))
        try:
            client = kfp.Client(host=args.host, namespace=args.namespace)
            run = client.create_run_from_pipeline_package(
                path,
                arguments={"experiment": exp.to_json(), "run_root": run_root},
                run_name=run_name,
                experiment_name=args.experiment or exp.mlflow.experiment,
            )
        except Exception as exc:  # connection and API errors: one line for the user
            raise ActivedetError(f"submit to {args.host} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    sys.stdout.write(f"submitted run {run.run_id} ({run_name}); outputs under {run_root}\n")
    return 0


def register(sub) -> None:
    """Add ``run``, ``compile``, ``submit`` and ``demo`` to the top-level parser."""
    p = sub.add_parser("run", help="run the active-learning pipeline locally (kfp.local)", description=_run.__doc__ or __doc__)
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--run-dir", help="directory for the store, KFP outputs and mlflow.db (default runs/<name>-<time>)")
    p.add_argument("--cycles", type=int, help="override the number of cycles")
    p.add_argument("-v", "--verbose", action="store_true", help="show kfp.local's full task logs (always in <run dir>/pipeline.log)")
    p.set_defaults(func=_run)

    p = sub.add_parser("compile", help="compile the pipeline to KFP YAML for a cluster")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("-o", "--output", default="pipeline.yaml", help="output YAML (default pipeline.yaml)")
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
