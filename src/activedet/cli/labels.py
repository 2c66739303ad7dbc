"""`activedet labels` commands: hand a selected batch to annotators and take their labels back."""

from __future__ import annotations

import argparse
import json
import sys


def _export(args: argparse.Namespace) -> int:
    from activedet.labels import export_batch, result_dict

    res = export_batch(args.dataset_uri, args.selection_uri, args.output_uri)
    sys.stdout.write(json.dumps(result_dict(res), indent=2) + "\n")
    return 0


def _import(args: argparse.Namespace) -> int:
    from activedet.labels import import_labels, result_dict

    res = import_labels(
        args.coco,
        selection_uri=args.selection_uri,
        dataset_uri=args.dataset_uri,
        ledger_uri=args.ledger_uri,
        output_uri=args.output_uri,
        previous_labels_uri=args.previous_labels_uri,
        allow_partial=args.allow_partial,
    )
    sys.stdout.write(json.dumps(result_dict(res), indent=2) + "\n")
    return 0


def register(sub) -> None:
    """Add ``labels export`` and ``labels import`` to the top-level parser."""
    parser = sub.add_parser("labels", help="export a selected batch for labeling / import returned labels")
    cmds = parser.add_subparsers(dest="labels_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("export", help="write a selection as COCO JSON + a manifest of image URIs")
    p.add_argument("--dataset-uri", required=True, help="dataset URI")
    p.add_argument("--selection-uri", required=True, help="select-batch output URI")
    p.add_argument("--output-uri", required=True, help="output prefix (batch.coco.json, manifest.jsonl)")
    p.set_defaults(func=_export)

    p = cmds.add_parser("import", help="validate returned COCO JSON against a selection and merge it")
    p.add_argument("coco", help="returned COCO JSON (path or URI)")
    p.add_argument("--dataset-uri", required=True, help="dataset URI")
    p.add_argument("--selection-uri", required=True, help="select-batch output URI the batch came from")
    p.add_argument("--ledger-uri", required=True, help="current ledger URI (images pending)")
    p.add_argument("--output-uri", required=True, help="output prefix (boxes.parquet, new ledger)")
    p.add_argument("--previous-labels-uri", default=None, help="earlier import output to merge into")
    p.add_argument("--allow-partial", action="store_true", help="accept a file missing some selected images")
    p.set_defaults(func=_import)
