"""Continuous mode: compile the scheduled-retraining pipeline for an experiment config.

    python pipelines/continuous.py configs/voc_r50_cluster.yaml -o continuous.yaml

``activedet schedule CONFIG --cron ... --host ...`` compiles the same pipeline and creates the
KFP recurring run; see :mod:`activedet.ops.continuous` for what one cycle does.
"""

from __future__ import annotations

import argparse
import json
import sys

from activedet.ops.pipeline import build_continuous, compile_continuous

__all__ = ["build_continuous", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment config YAML")
    parser.add_argument("-o", "--output", default="continuous.yaml", help="pipeline package to write")
    parser.add_argument("--local", action="store_true", help="compile without cluster settings")
    args = parser.parse_args(argv)
    path, params = compile_continuous(args.config, args.output, platform=not args.local)
    sys.stdout.write(json.dumps({"package": str(path), "params": {k: v for k, v in params.items() if k != "experiment"}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
