"""``activedet data``: generate, import and export datasets.

Commands::

    activedet data synth --out URI [--sequences N --frames M --seed S --size HxW --ego-speed PX ...]
    activedet data import-coco ANNOTATIONS.json --images DIR_OR_URI --out URI [--split train]
                               [--skip-missing-files --skip-bad-images --rescale-boxes]
    activedet data import-yolo DATA.yaml --out URI [--id-offset 1 --skip-bad-images]
    activedet data export-coco DATASET_URI --out FILE.json [--split val]
    activedet data split DATASET --out URI [--val-fraction 0.2 --test-fraction 0 --group-by auto]
    activedet data merge A B ... --out URI [--prefix-ids]

Each prints a JSON summary on stdout (``split`` prints a per-split table; ``--json`` for JSON). Bad input exits with code 2 and one line on stderr, and
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


def _annotation_split(value: str, default: str) -> tuple[str, str]:
    """``FILE[:SPLIT]`` -> (file, split); a suffix that is not a split name stays part of the path."""
    from activedet.schema import SPLITS

    head, sep, tail = value.rpartition(":")
    return (head, tail) if sep and tail in SPLITS and head else (value, default)


def _import_coco(args: argparse.Namespace) -> int:
    import tempfile

    from activedet.data.coco import import_coco
    from activedet.data.merge import merge_datasets

    files = [_annotation_split(a, args.split) for a in args.annotations]

    def one(annotations: str, split: str, out_uri: str) -> dict:
        return import_coco(annotations, images=args.images, out_uri=out_uri, split=split, crowd=args.crowd,
                           skip_missing_files=args.skip_missing_files, skip_bad_images=args.skip_bad_images,
                           rescale_boxes=args.rescale_boxes, workers=args.workers)

    if len(files) == 1:
        return _print(one(*files[0], args.out))
    with tempfile.TemporaryDirectory(prefix="activedet-import-") as tmp:  # one import per file, then one merge
        parts = [one(path, split, f"{tmp}/part-{k}") for k, (path, split) in enumerate(files)]
        summary = merge_datasets([p["uri"] for p in parts], args.out, prefix_ids=args.prefix_ids)
    summary["inputs"] = [{"annotations": path, "split": split, "images": p["num_images"], "boxes": p["num_boxes"]}
                         for (path, split), p in zip(files, parts, strict=True)]
    return _print(summary)


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
    p.add_argument("annotations", nargs="+", metavar="ANNOTATIONS[:SPLIT]",
                   help="COCO annotations JSON (local path or s3:// URI); several files, each with its split "
                   "(e.g. train.json:train val.json:val), merge into one dataset")
    p.add_argument("--images", required=True, help="directory or URI prefix holding the images' file_names")
    p.add_argument("--out", required=True, help="output dataset URI")
    p.add_argument("--split", type=_split_arg, default="train",
                   help="split of every image of a file given without :SPLIT (default: train)")
    p.add_argument("--prefix-ids", action="store_true",
                   help="with several files: prefix image ids with the file's position (exports that reuse ids)")
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


# --------------------------------------------------------------------------- split / merge


def _split(args: argparse.Namespace) -> int:
    from activedet.data.split import SplitSettings, format_split_table, split_dataset

    settings = SplitSettings(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                             group_by=args.group_by, time_gap=args.time_gap, similarity=args.similarity)
    summary = split_dataset(args.dataset, args.out, settings)
    if args.json:
        return _print(summary)
    sys.stdout.write(f"split {args.dataset} by {summary['group_by']} into {summary['scenes']} scenes -> {args.out}\n\n")
    sys.stdout.write(format_split_table(summary["splits"]) + "\n")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from activedet.data.merge import merge_datasets

    return _print(merge_datasets(args.datasets, args.out, prefix_ids=args.prefix_ids))


def _add_split_merge(sub) -> None:
    from activedet.data.split import GROUP_BY, SplitSettings

    d = SplitSettings()
    p = sub.add_parser(
        "split",
        help="assign train/val/test by scene (near-duplicate frames never straddle splits)",
        description="Write a copy of DATASET with train/val/test assigned by whole scenes: sequence ids, "
        "else timestamp / frame-index runs, else near-duplicate clusters of image thumbnails. Stratified "
        "so that every class with boxes in enough scenes appears in val. Prints a per-split table.",
    )
    p.add_argument("dataset", metavar="DATASET", help="committed dataset URI")
    p.add_argument("--out", required=True, help="output dataset URI")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"share of images in val (default: {d.val_fraction})")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help=f"share of images in test (default: {d.test_fraction})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the scene order (default: {d.seed})")
    p.add_argument("--group-by", choices=GROUP_BY, default=d.group_by, help=f"how scenes are found (default: {d.group_by})")
    p.add_argument("--time-gap", type=float, default=d.time_gap, help=f"seconds between frames that start a new scene (default: {d.time_gap})")
    p.add_argument("--similarity", type=float, default=d.similarity,
                   help=f"thumbnail correlation at which images are near-duplicates (default: {d.similarity})")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    p.set_defaults(func=_split)

    p = sub.add_parser(
        "merge",
        help="merge several datasets into one",
        description="One dataset from several (e.g. one import per annotation file): categories matched by "
        "name (same name -> same id; conflicts are errors), image ids unique, splits kept.",
    )
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="committed dataset URIs (two or more)")
    p.add_argument("--out", required=True, help="output dataset URI")
    p.add_argument("--prefix-ids", action="store_true", help="prefix image ids with the input's position (0/, 1/ ...)")
    p.set_defaults(func=_merge)


def register(sub) -> None:
    """Add the ``data`` command group to the top-level parser."""
    parser = sub.add_parser("data", help="generate, import and export datasets", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    commands.required = True
    _add_synth(commands)
    _add_coco_yolo(commands)
    _add_split_merge(commands)

