"""Split a dataset into train/val/test by scene, so near-duplicate frames never straddle splits.

Consecutive frames of a drive (or of a fixed camera) are near-duplicates: a random image-level
split leaks the validation set into training. :func:`split_dataset` therefore assigns whole
*scenes* to splits. A scene is, in order of preference (``group_by="auto"``):

1. ``sequence``   -- the images' ``sequence_id`` (SynthDrive, imports that carry one);
2. ``time``       -- runs of rows (in the order the table lists them) whose ``timestamp`` steps
   stay within [0, ``time_gap``] seconds or, without timestamps, whose ``frame_index`` counts
   up by one;
3. ``similarity`` -- clusters of near-duplicate images: every image is reduced to a 16x9 colour
   thumbnail, centred per channel (brightness changes cancel), minus the dataset's median
   thumbnail (the road and sky every frame shares would otherwise make all frames alike) and
   scaled to unit norm. Images whose residuals correlate at least ``similarity`` (also against
   the mirrored thumbnail: augmented exports flip frames) are linked; scenes are the connected
   components (single linkage, so a drive's frames chain together). The default 0.7 kept every
   SynthDrive sequence whole (12x5, 40x8 and 30x20 sequences x frames) and finds 27 camera
   scenes in traffic-cams. This pass compares all pairs: fine for tens of thousands of images;
   give sequence ids or timestamps for millions.

Assignment is stratified: for every class, rarest first, that has boxes in enough scenes, one
scene holding it goes to val (and test, when asked) while train keeps at least one; the other
scenes fill val and test towards their fractions in a seeded random order; the rest is train.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.data.dataset import Dataset, load_dataset, write_dataset_tables
from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

GROUP_BY = ("auto", "sequence", "time", "similarity")
THUMB_W, THUMB_H = 16, 9


class SplitError(ActivedetError):
    """A dataset cannot be split as asked."""


@dataclass(frozen=True)
class SplitSettings:
    """How :func:`split_dataset` groups and assigns images.

    Args:
        val_fraction: share of images in val (by whole scenes, so approximate).
        test_fraction: share of images in test.
        seed: seed of the random scene order.
        group_by: ``auto``, ``sequence``, ``time`` or ``similarity`` (see the module docstring).
        time_gap: seconds between timestamps that start a new scene.
        similarity: thumbnail correlation in [0, 1] at which two images are near-duplicates.
        workers: threads decoding thumbnails.
    """

    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    group_by: str = "auto"
    time_gap: float = 2.0
    similarity: float = 0.7
    workers: int = 8

    def __post_init__(self) -> None:
        if self.group_by not in GROUP_BY:
            raise SplitError(f"--group-by must be one of {list(GROUP_BY)}, got {self.group_by!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SplitError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise SplitError("--val-fraction + --test-fraction must leave images for train")
        if not 0.0 < self.similarity <= 1.0:
            raise SplitError(f"--similarity must be in (0, 1], got {self.similarity}")
        if self.time_gap <= 0:
            raise SplitError(f"--time-gap must be positive, got {self.time_gap}")


# --------------------------------------------------------------------------- scenes


def scenes_from_sequences(images: pa.Table) -> list[str] | None:
    seq = images.column("sequence_id").to_pylist()
    return None if any(s is None for s in seq) else [f"seq:{s}" for s in seq]


def scenes_from_time(images: pa.Table, gap: float) -> list[str] | None:
    """Scenes from timestamp gaps or, failing that, frame-index runs, in table order.

    A new scene starts where the time to the previous row is negative or above ``gap`` seconds
    (a new drive or camera), or where the frame index does not count up by one.
    """
    ts = images.column("timestamp").to_pylist()
    frames = images.column("frame_index").to_pylist()
    if all(t is not None for t in ts):
        breaks = [not 0.0 <= ts[k] - ts[k - 1] <= gap for k in range(1, len(ts))]
        kind = "time"
    elif all(f is not None for f in frames):
        breaks = [frames[k] != frames[k - 1] + 1 for k in range(1, len(frames))]
        kind = "frames"
    else:
        return None
    out, scene = [f"{kind}:0"], 0
    for b in breaks:
        scene += b
        out.append(f"{kind}:{scene}")
    return out


def _thumbnail(path) -> np.ndarray:
    """(2, 432) float32: the per-channel centred 16x9 RGB thumbnail and its mirror image."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (THUMB_W * 4, THUMB_H * 4))  # JPEG: decode at a fraction of the size
        g = np.asarray(im.convert("RGB").resize((THUMB_W, THUMB_H), Image.BILINEAR), dtype=np.float32)
    g = g - g.mean(axis=(0, 1))
    return np.stack([g.ravel(), g[:, ::-1].ravel()])


def thumbnails(ds: Dataset, workers: int = 8) -> np.ndarray:
    """(N, 2, 432) thumbnails of every image of ``ds`` (decoded in parallel threads)."""
    from activedet.store import ContentCache

    cache = ContentCache.default()
    uris = [ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()]

    def one(uri: str) -> np.ndarray:
        try:
            return _thumbnail(cache.fetch(uri))
        except OSError as exc:
            raise SplitError(f"cannot read image {uri}: {exc}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(one, uris)))


def near_duplicate_scenes(thumbs: np.ndarray, threshold: float, chunk: int = 2048) -> list[str]:
    """Connected components of the graph linking images whose thumbnails correlate >= ``threshold``.

    Args:
        thumbs: (N, 2, D) centred thumbnails and their mirror images (:func:`thumbnails`).
        threshold: correlation in (0, 1] of the residuals from the median thumbnail.

    Returns:
        one scene name per image (``sim:<k>``).
    """
    n = len(thumbs)
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    residual = thumbs - np.median(thumbs[:, 0], axis=0)
    residual /= np.linalg.norm(residual, axis=2, keepdims=True) + 1e-6
    plain, mirrored = residual[:, 0], residual[:, 1]
    for start in range(0, n, chunk):
        block = plain[start:start + chunk]
        sim = np.maximum(block @ plain.T, block @ mirrored.T)
        for i, j in zip(*np.nonzero(sim >= threshold), strict=True):
            a, b = root(start + int(i)), root(int(j))
            if a != b:
                parent[a] = b
    names: dict[int, str] = {}
    return [names.setdefault(root(i), f"sim:{len(names)}") for i in range(n)]


def derive_scenes(ds: Dataset, settings: SplitSettings) -> tuple[list[str], str]:
    """(scene per image, how it was found)."""
    tried = ("sequence", "time", "similarity") if settings.group_by == "auto" else (settings.group_by,)
    for method in tried:
        if method == "sequence":
            scenes = scenes_from_sequences(ds.images)
        elif method == "time":
            scenes = scenes_from_time(ds.images, settings.time_gap)
        else:
            scenes = near_duplicate_scenes(thumbnails(ds, settings.workers), settings.similarity)
        if scenes is not None:
            return scenes, method
        if settings.group_by != "auto":
            raise SplitError(f"--group-by {method}: {ds.uri} has images without {'sequence_id' if method == 'sequence' else 'timestamp / frame_index'}")
    raise AssertionError("similarity always yields scenes")  # pragma: no cover


# --------------------------------------------------------------------------- assignment


@dataclass
class _Scene:
    name: str
    images: int
    classes: Counter = field(default_factory=Counter)


def assign_scenes(scenes: list[_Scene], settings: SplitSettings) -> dict[str, str]:
    """Scene name -> split: stratified coverage first, then fill val/test towards their fractions."""
    total = sum(s.images for s in scenes)
    targets = {"val": round(settings.val_fraction * total), "test": round(settings.test_fraction * total)}
    order = scenes[:]
    random.Random(settings.seed).shuffle(order)
    assigned: dict[str, str] = {}
    filled = Counter()
    held_splits = [s for s in ("val", "test") if targets[s] > 0]

    def free_with(c) -> list[_Scene]:
        return [s for s in order if s.name not in assigned and s.classes[c] > 0]

    classes = Counter(c for s in scenes for c in s.classes)  # number of scenes holding each class
    for split in held_splits:
        covered = {c for s in scenes if assigned.get(s.name) == split for c in s.classes}
        for c, _ in sorted(classes.items(), key=lambda kv: (kv[1], kv[0])):
            if c in covered:
                continue
            for cand in sorted(free_with(c), key=lambda s: s.images):
                # train must keep every class this scene holds, and the split must not overflow badly
                keeps_train = all(len(free_with(k)) > 1 for k in cand.classes)
                if keeps_train and filled[split] + cand.images <= max(targets[split] * 1.5, cand.images if not filled[split] else 0):
                    assigned[cand.name] = split
                    filled[split] += cand.images
                    covered |= set(cand.classes)
                    break
    for scene in order:
        if scene.name in assigned:
            continue
        for split in held_splits:
            if filled[split] + scene.images <= targets[split]:
                assigned[scene.name] = split
                filled[split] += scene.images
                break
        else:
            assigned[scene.name] = "train"
    return assigned


# --------------------------------------------------------------------------- the command


def split_summary(images: pa.Table, boxes: pa.Table, class_names: dict[int, str]) -> list[dict]:
    """Per split: images, scenes, boxes and boxes per class."""
    split_of = dict(zip(images.column("image_id").to_pylist(), images.column("split").to_pylist(), strict=True))
    scenes = Counter()
    for split, _ in set(zip(images.column("split").to_pylist(), images.column("sequence_id").to_pylist(), strict=True)):
        scenes[split] += 1
    rows = []
    per_class: dict[str, Counter] = {s: Counter() for s in schema.SPLITS}
    for image_id, cat in zip(boxes.column("image_id").to_pylist(), boxes.column("category_id").to_pylist(), strict=True):
        per_class[split_of[image_id]][cat] += 1
    counts = Counter(split_of.values())
    for split in schema.SPLITS:
        if not counts[split]:
            continue
        rows.append({"split": split, "images": counts[split], "scenes": scenes[split],
                     "boxes": sum(per_class[split].values()),
                     **{name: per_class[split][cid] for cid, name in class_names.items()}})
    return rows


def format_split_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in cols]
    line = lambda values: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True)))  # noqa: E731
    return "\n".join([line(cols), *(line([r[c] for c in cols]) for r in rows)])


def split_dataset(dataset_uri: str, out_uri: str, settings: SplitSettings | None = None) -> dict:
    """Write a copy of the dataset at ``out_uri`` with train/val/test assigned by scene.

    Image URIs become absolute (the new dataset does not carry the image files); images without a
    ``sequence_id`` get their derived scene as one, so later stages see the same groups.

    Returns:
        a summary: method, scene count, per-split rows (images, scenes, boxes, per class), uri.
    """
    settings = settings or SplitSettings()
    ds = load_dataset(dataset_uri)
    if ds.images.num_rows < 2:
        raise SplitError(f"{dataset_uri}: {ds.images.num_rows} image(s): nothing to split")
    scene_of, method = derive_scenes(ds, settings)
    ids = ds.images.column("image_id").to_pylist()
    by_scene: dict[str, _Scene] = {}
    for scene in scene_of:
        by_scene.setdefault(scene, _Scene(scene, 0)).images += 1
    scene_by_image = dict(zip(ids, scene_of, strict=True))
    for image_id, cat in zip(ds.boxes.column("image_id").to_pylist(), ds.boxes.column("category_id").to_pylist(), strict=True):
        by_scene[scene_by_image[image_id]].classes[cat] += 1
    if len(by_scene) < 2:
        raise SplitError(f"{dataset_uri}: all {len(ids)} images form one scene ({method}); lower --similarity or add sequence ids")
    split_of = assign_scenes(list(by_scene.values()), settings)

    seq = ds.images.column("sequence_id").to_pylist()
    images = (
        ds.images.set_column(ds.images.schema.get_field_index("split"), "split",
                             pa.array([split_of[s] for s in scene_of], pa.string()))
        .set_column(ds.images.schema.get_field_index("sequence_id"), "sequence_id",
                    pa.array([s if s is not None else scene for s, scene in zip(seq, scene_of, strict=True)], pa.string()))
        .set_column(ds.images.schema.get_field_index("uri"), "uri",
                    pa.array([ds.resolve_uri(u) for u in ds.images.column("uri").to_pylist()], pa.string()))
    )
    meta = {"source": "split", "parent": str(dataset_uri), "group_by": method, "scenes": len(by_scene),
            "val_fraction": settings.val_fraction, "test_fraction": settings.test_fraction, "seed": settings.seed,
            **({"similarity": settings.similarity} if method == "similarity" else {})}
    with store.OutputWriter(out_uri) as out:
        write_dataset_tables(out, images, ds.boxes, ds.categories, meta)
    rows = split_summary(images, ds.boxes, dict(zip(ds.category_ids, ds.class_names, strict=True)))
    missing_val = [name for name in ds.class_names if not any(r["split"] == "val" and r.get(name) for r in rows)]
    if settings.val_fraction > 0 and missing_val:
        log.warning("classes without boxes in val (too few scenes hold them): %s", ", ".join(missing_val))
    return {**meta, "uri": str(out_uri), "splits": rows}
