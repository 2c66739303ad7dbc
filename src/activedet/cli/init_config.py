"""``activedet init-config DATASET``: write an experiment YAML sized to a dataset and this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from activedet.errors import ConfigError


def _init_config(args: argparse.Namespace) -> int:
    from activedet.pipeline.init_config import propose, render_yaml

    out = Path(args.output)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: pass --force to replace it")
    proposal = propose(args.dataset, minutes=args.minutes, device=args.device, measure=not args.no_measure)
    header = (f"Written by `activedet init-config {args.dataset} --minutes {args.minutes:g}`: every value is a choice for\n"
              "this dataset and machine, with the reason above it. Edit freely; `activedet validate` checks the file.")
    text = render_yaml(proposal, header)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    c = proposal.config
    sys.stdout.write(f"wrote {out}: {c['training']['preset']} on {c['device']}, I={c['initial_size']} B={c['budget']} "
                     f"x{c['cycles']} cycles, {c['acquisition']['strategy']}; next: activedet run {out}\n")
    return 0


def register(sub) -> None:
    """Add ``init-config`` to the top-level parser."""
    p = sub.add_parser("init-config", help="write an experiment YAML sized to a dataset and this machine",
                       description=__doc__ + "\n\n" + (_doc() or ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help="committed dataset URI with train and val splits")
    p.add_argument("-o", "--output", default="experiment.yaml", help="YAML file to write (default: experiment.yaml)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall time the whole run may take here (default: 30)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when torch sees a GPU")
    p.add_argument("--no-measure", action="store_true", help="estimate the training step cost instead of timing 3 steps")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_init_config)


def _doc() -> str | None:
    from activedet.pipeline import init_config

    return init_config.__doc__
