"""Run the headline benchmarks one after the other: throughput, then label efficiency.

    .venv/bin/python benchmarks/run_all.py [--device cuda] [--smoke]

Each writes its JSON/CSV (and the budget-curve PNG) under benchmarks/results/; see
benchmarks/README.md for what they measure and docs/results.md for the latest figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a few minutes in all)")
    args = p.parse_args(argv)
    extra = ["--device", args.device] + (["--smoke"] if args.smoke else [])
    for script in ("throughput.py", "label_efficiency.py"):
        cmd = [sys.executable, str(HERE / script), *extra]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
