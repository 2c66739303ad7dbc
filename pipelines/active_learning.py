"""The active-learning pipeline (see :mod:`activedet.pipeline.dag`).

Compile from an experiment YAML without the CLI::

    python pipelines/active_learning.py configs/voc_r50_cluster.yaml -o pipeline.yaml

which is what ``activedet compile`` does. In Python, ``build_pipeline(load_experiment(path))``
returns the pipeline function for ``kfp.Client().create_run_from_pipeline_func`` or kfp.local.
"""

from __future__ import annotations

import argparse
import sys

from activedet.pipeline.dag import build_pipeline, compile_pipeline
from activedet.pipeline.plan import load_experiment

__all__ = ["build_pipeline", "compile_pipeline", "load_experiment"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the activedet active-learning pipeline")
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("-o", "--output", default="pipeline.yaml")
    parser.add_argument("--local", action="store_true", help="omit cluster settings (node selector, GPUs, secrets)")
    args = parser.parse_args(argv)
    path = compile_pipeline(load_experiment(args.config), args.output, platform=not args.local)
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
