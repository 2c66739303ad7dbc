"""``activedet predict``: run a detector checkpoint over a dataset and write a boxes table.

    activedet predict --checkpoint URI --dataset URI [--split val] --out URI [--flip-tta]
                      [--batch-size 8] [--score-floor 0.05] [--nms-iou 0.5] [--max-dets 100]
                      [--device auto]

Writes ``predictions.parquet`` (boxes table, ``source = pred``, with ``class_probs``; with
``--flip-tta`` also ``predictions_flipped.parquet``) and ``predict.json`` under ``--out``,
committed atomically, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys


def _predict(args: argparse.Namespace) -> int:
    from activedet import store
    from activedet.data.dataset import load_dataset
    from activedet.errors import ConfigError
    from activedet.models.checkpoint import load_detector
    from activedet.models.predict import Predictor, predictions_to_boxes_table
    from activedet.models.types import ImagePrediction

    dataset = load_dataset(args.dataset)
    ids = dataset.split_ids(args.split) if args.split != "all" else dataset.images.column("image_id").to_pylist()
    if not ids:
        raise ConfigError(f"predict: split {args.split!r} of {args.dataset} has no images")
    detector = load_detector(args.checkpoint, dataset=dataset)
    predictor = Predictor(
        detector, device=args.device, batch_size=args.batch_size, score_floor=args.score_floor,
        nms_iou=args.nms_iou, max_dets=args.max_dets,
    )
    preds = list(predictor.predict(dataset, ids, flip_tta=args.flip_tta))
    table = predictions_to_boxes_table(preds, dataset)
    summary = {
        "out": args.out, "checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split,
        "images": len(ids), "boxes": table.num_rows, "images_per_s": round(predictor.images_per_s, 2),
    }
    with store.OutputWriter(args.out, meta={"command": "predict"}) as out:
        out.write_table("predictions.parquet", table)
        if args.flip_tta:
            flipped = [ImagePrediction(p.image_id, p.width, p.height, p.flipped) for p in preds]
            out.write_table("predictions_flipped.parquet", predictions_to_boxes_table(flipped, dataset))
        out.write_json("predict.json", summary)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def register(sub) -> None:
    """Add ``activedet predict`` to the top-level parser."""
    p = sub.add_parser("predict", help="run a checkpoint over a dataset split, write a boxes table", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder URI (model.safetensors + meta.json)")
    p.add_argument("--dataset", required=True, help="dataset URI")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"], help="images to predict (default: val)")
    p.add_argument("--out", required=True, help="output URI (predictions.parquet, predict.json)")
    p.add_argument("--flip-tta", action="store_true", help="also predict the flipped images (mapped back)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--score-floor", type=float, default=0.05, help="drop class scores at or below this")
    p.add_argument("--nms-iou", type=float, default=0.5)
    p.add_argument("--max-dets", type=int, default=100)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.set_defaults(func=_predict)
