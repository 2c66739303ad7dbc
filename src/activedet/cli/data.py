"""``activedet data``: generate, import and export datasets.

Commands::

    activedet data synth --out URI [--sequences N --frames M --seed S --size HxW --ego-speed PX ...]
    activedet data import-coco ANNOTATIONS.json --images DIR_OR_URI --out URI [--split train]
                               [--skip-missing-files --skip-bad-images --rescale-boxes]
    activedet data import-yolo DATA.yaml --out URI [--id-offset 1 --skip-bad-images]
    activedet data export-coco DATASET_URI --out FILE.json [--split val]

Each prints a JSON summary on stdout. Bad input exits with code 2 and one line on stderr, and
nothing is committed at ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys


def _print(summary: dict) -> int:
    sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return 0


# --------------------------------------------------------------------------- synth


def _synth(args: argparse.Namespace) -> int:
    from activedet.data.synth import SynthConfig, generate_synthdrive, parse_size

    overrides = {
        name: getattr(args, name)
        for name in SynthConfig.model_fields
        if getattr(args, name, None) is not None
    }
    if args.size is not None:
        overrides["height"], overrides["width"] = parse_size(args.size)
    return _print(generate_synthdrive(args.out, **overrides))


def _add_synth(sub) -> None:
    from activedet.data.synth import SynthConfig

    p = sub.add_parser(
        "synth",
        help="render a SynthDrive dataset (procedural driving scenes)",
        description="Render SynthDrive: sequences of near-duplicate driving frames with long-tailed "
        "classes (car, pedestrian, cyclist, truck, traffic_sign) and day/dusk/fog/night conditions. "
        "Deterministic by seed; splits by sequence.",
    )
    p.add_argument("--out", required=True, help="output dataset URI (local path or s3://bucket/prefix)")
    p.add_argument("--size", default=None, metavar="HxW", help="image size, e.g. 128x256 (default: 128x256)")
    types = {int: int, float: float}
    for name, field in SynthConfig.model_fields.items():
        if name in ("height", "width"):
            continue
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=types.get(field.annotation, str),
            default=None,
            metavar="N" if field.annotation is int else "X",
            help=f"{field.description} (default: {field.default!r})",
        )
    p.set_defaults(func=_synth)


# --------------------------------------------------------------------------- COCO / YOLO


def _import_coco(args: argparse.Namespace) -> int:
    from activedet.data.coco import import_coco

    return _print(
        import_coco(
            args.annotations,
            images=args.images,
            out_uri=args.out,
            split=args.split,
            crowd=args.crowd,
            skip_missing_files=args.skip_missing_files,
            skip_bad_images=args.skip_bad_images,
            rescale_boxes=args.rescale_boxes,
            workers=args.workers,
        )
    )


def _import_yolo(args: argparse.Namespace) -> int:
    from activedet.data.yolo import import_yolo

    return _print(import_yolo(args.data_yaml, out_uri=args.out, id_offset=args.id_offset,
                              skip_bad_images=args.skip_bad_images, workers=args.workers))


def _export_coco(args: argparse.Namespace) -> int:
    from activedet.data.coco import export_coco

    return _print(export_coco(args.dataset, args.out, split=args.split))


def _split_arg(value: str) -> str:
    from activedet.schema import SPLITS

    if value not in SPLITS:
        raise argparse.ArgumentTypeError(f"invalid split {value!r}; choose from {', '.join(SPLITS)}")
    return value


def _workers_arg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"expected a thread count from 1 to 256, got {value!r}")
    return n


def _add_image_check_flags(p) -> None:
    from activedet.data.checks import DEFAULT_WORKERS

    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="drop images whose file is empty, not an image, unreadable or truncated (and their boxes) "
        "instead of failing; they are counted in the summary",
    )
    p.add_argument("--workers", type=_workers_arg, default=DEFAULT_WORKERS, metavar="N",
                   help=f"threads reading image headers (default: {DEFAULT_WORKERS})")


def _add_coco_yolo(sub) -> None:
    p = sub.add_parser(
        "import-coco",
        help="import a COCO instances JSON and its images",
        description="Import COCO detection annotations (bbox xywh -> xyxy). Image URIs point at the "
        "original files. Extra fields are ignored, except a track id in attributes, which is kept.",
    )
    p.add_argument("annotations", help="COCO annotations JSON (local path or s3:// URI)")
    p.add_argument("--images", required=True, help="directory or URI prefix holding the images' file_names")
    p.add_argument("--out", required=True, help="output dataset URI")
    p.add_argument("--split", type=_split_arg, default="train", help="split of every image (default: train)")
    p.add_argument(
        "--crowd",
        choices=("flag", "skip"),
        default="flag",
        help="iscrowd=1 boxes: keep them with iscrowd=true (flag) or drop them (skip) (default: flag)",
    )
    p.add_argument(
        "--skip-missing-files",
        action="store_true",
        help="drop images whose file does not exist instead of failing",
    )
    _add_image_check_flags(p)
    p.add_argument(
        "--rescale-boxes",
        action="store_true",
        help="when an image file's size differs from the JSON's width/height (resized after labelling), "
        "scale its boxes to the file's size instead of failing",
    )
    p.set_defaults(func=_import_coco)

    p = sub.add_parser(
        "import-yolo",
        help="import a YOLO dataset (data.yaml + labels/)",
        description="Import a YOLO dataset: splits from the yaml's train/val/test keys, image sizes from "
        "image headers, category id = YOLO class index + --id-offset.",
    )
    p.add_argument("data_yaml", metavar="DATA.yaml", help="YOLO data.yaml (local path)")
    p.add_argument("--out", required=True, help="output dataset URI")
    p.add_argument("--id-offset", type=int, default=1, help="category id = YOLO index + this (default: 1, COCO-like)")
    _add_image_check_flags(p)
    p.set_defaults(func=_import_yolo)

    p = sub.add_parser(
        "export-coco",
        help="export a dataset's ground truth as COCO JSON",
        description="Write a dataset's images and ground-truth boxes as COCO instances JSON (xyxy -> xywh).",
    )
    p.add_argument("dataset", metavar="DATASET_URI", help="committed dataset URI")
    p.add_argument("--out", required=True, help="output JSON file (local path or s3:// URI)")
    p.add_argument("--split", type=_split_arg, default=None, help="only this split (default: all)")
    p.set_defaults(func=_export_coco)


def register(sub) -> None:
    """Add the ``data`` command group to the top-level parser."""
    parser = sub.add_parser("data", help="generate, import and export datasets", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    commands.required = True
    _add_synth(commands)
    _add_coco_yolo(commands)

