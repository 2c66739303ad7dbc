"""``activedet schedule``: scheduled retraining (continuous mode) as KFP recurring runs.

``activedet schedule CONFIG --cron "0 2 * * *" --host URL`` compiles the continuous-mode pipeline
for the experiment CONFIG and creates a recurring run (``max_concurrency=1``, no catch-up by
default). Five-field cron expressions are converted to KFP's six fields (seconds first). A
recurring run of the same name in the KFP experiment is replaced, so re-running (or a chart
upgrade) never adds a second schedule. ``activedet schedule list --host URL`` and
``activedet schedule delete ID|--name NAME --host URL`` manage them. Every KFP failure is one
line naming the host, the HTTP status and what to check (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from activedet.errors import ConfigError
from activedet.ops import schedule as ops
from activedet.ops.cron import to_kfp_cron


def default_compiler(config_path: str, out_dir: Path):
    """Compile the continuous-mode pipeline for ``config_path`` (see pipelines/continuous.py)."""
    from activedet.ops.pipeline import compile_continuous

    return compile_continuous(config_path, out_dir / "continuous.yaml")


def create(args: argparse.Namespace, *, client=None, compiler=default_compiler) -> int:
    """Handler of ``activedet schedule CONFIG``; ``client``/``compiler`` are injectable for tests."""
    from activedet.pipeline.plan import load_experiment

    exp = load_experiment(args.config)  # validate first: bad input must not reach the compiler or server
    to_kfp_cron(args.cron)
    client = client or ops.kfp_client(args.host, args.namespace)  # a quick probe before compiling
    with tempfile.TemporaryDirectory(prefix="activedet-schedule-") as tmp:
        package, params = compiler(args.config, Path(tmp))
        request = ops.build_request(
            name=args.name or f"{exp.name}-continuous",
            cron=args.cron,
            package_path=package,
            params=params,
            experiment=args.experiment,
            max_concurrency=args.max_concurrency,
            catchup=args.catchup,
            namespace=args.namespace,
            service_account=exp.kubernetes.service_account,
        )
        run_id, replaced = ops.replace_schedule(client, request)
    sys.stdout.write(json.dumps({"recurring_run_id": run_id, "name": request.job_name, "cron": request.cron_expression,
                                 "replaced": replaced}) + "\n")
    return 0


def list_(args: argparse.Namespace, *, client=None) -> int:
    client = client or ops.kfp_client(args.host, args.namespace)
    sys.stdout.write(json.dumps(ops.list_schedules(client, namespace=args.namespace), indent=2, default=str) + "\n")
    return 0


def delete(args: argparse.Namespace, *, client=None) -> int:
    """``delete ID`` deletes one recurring run; ``delete --name NAME`` all of that name (the chart's uninstall)."""
    client = client or ops.kfp_client(args.host, args.namespace)
    if args.recurring_run_id:
        ops.delete_schedule(client, args.recurring_run_id)
        deleted = [args.recurring_run_id]
    else:
        deleted = ops.delete_by_name(client, args.name, namespace=args.namespace)
    sys.stdout.write(json.dumps({"deleted": deleted}) + "\n")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.config == "list":
        return list_(args)
    if args.config == "delete":
        if not args.rest and not args.name:
            raise ConfigError("activedet schedule delete: give the recurring run ID or --name NAME")
        args.recurring_run_id = args.rest[0] if args.rest else None
        return delete(args)
    return create(args)


def register(sub) -> None:
    """``activedet schedule CONFIG|list|delete ID``."""
    p = sub.add_parser("schedule", help="schedule continuous retraining on Kubeflow (recurring runs)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG|list|delete", help="experiment config YAML to schedule, or 'list' / 'delete ID'")
    p.add_argument("rest", nargs="*", metavar="ID", help="recurring run id (for delete)")
    p.add_argument("--host", required=True, help="KFP API server, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888")
    p.add_argument("--namespace", help="Kubernetes namespace of the runs (multi-user Kubeflow: your profile namespace)")
    p.add_argument("--cron", default="0 2 * * *", help="cron expression, 5 fields (converted) or 6 (KFP, seconds first); default: %(default)s")
    p.add_argument("--name", help="recurring run name (default: <experiment name>-continuous); with delete: delete all of that name")
    p.add_argument("--experiment", help="KFP experiment (default: the recurring run name)")
    p.add_argument("--max-concurrency", type=int, default=1, help="concurrent runs allowed (default: %(default)s)")
    p.add_argument("--catchup", action="store_true", help="run missed intervals after a pause (default: no catch-up)")
    p.set_defaults(func=_dispatch)
