"""Is a dataset ready for an active-learning run? Checked before anything trains.

:func:`check_run_ready` is what ``activedet validate`` / ``run`` / ``compile`` call on a dataset
they can read: each problem is one line that says which command fixes it, so a user learns in
seconds what would otherwise fail after a teacher and a student have trained.
"""

from __future__ import annotations

from collections import Counter

from activedet.data.dataset import Dataset
from activedet.errors import ConfigError


def split_counts(ds: Dataset) -> Counter:
    return Counter(ds.images.column("split").to_pylist())


def check_run_ready(ds: Dataset, *, initial_size: int, eval_split: str = "val", pool_split: str = "train",
                    where: str = "dataset.uri") -> None:
    """Raise a one-line :class:`ConfigError` when ``ds`` cannot carry a run.

    Args:
        ds: the loaded dataset.
        initial_size: I, labeled at random from ``pool_split`` in cycle 0.
        eval_split: the split evaluate scores every cycle on.
        pool_split: the active-learning pool.
        where: the config key the dataset came from, for the message.
    """
    counts = split_counts(ds)
    fix = f"`activedet data split {ds.uri} --out <new dataset>` and point {where} at it"
    if not counts[pool_split]:
        raise ConfigError(f"{where}: split {pool_split!r} of {ds.uri} has no images (splits: {dict(counts)}); run {fix}")
    if not counts[eval_split]:
        raise ConfigError(f"{where}: split {eval_split!r} of {ds.uri} has no images, and evaluate needs it; run {fix}")
    if initial_size > counts[pool_split]:
        raise ConfigError(
            f"initial_size: {initial_size} is more than the {counts[pool_split]} {pool_split} images of {ds.uri}"
        )
    with_boxes = set(ds.boxes.column("category_id").to_pylist())
    empty = [f"{name!r} (id {cid})" for cid, name in zip(ds.category_ids, ds.class_names, strict=True) if cid not in with_boxes]
    if empty:
        raise ConfigError(
            f"{where}: class {', '.join(empty)} of {ds.uri} has no boxes at all: a detector cannot learn it; "
            "drop the category from the annotations and import again"
        )
