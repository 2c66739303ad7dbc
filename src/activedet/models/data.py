"""Training data for detectors: images from the store, box-aware augmentation, endless batches.

:class:`DetectionDataset` yields ``(image [3, H, W] float in [0, 1], target)`` with target keys
``boxes [N, 4]`` (xyxy pixels), ``labels [N]`` int64 (model labels 1..C), ``weights [N]`` float
and ``regress [N]`` bool (see :class:`~activedet.models.roi_heads.WeightedRoIHeads`).
Augmentation (torchvision.transforms.v2, boxes move with the image): horizontal flip and scale
jitter (the content is zoomed by a factor in ``scale_jitter`` on an unchanged canvas, so the
object scale really changes even though the model resizes every image to its ``min_size``) and,
with ``crop_size``, a random crop of that many pixels (for models that keep the input resolution,
preset option ``native_scale``: objects stay at their true pixel size at a fraction of the cost of
a full frame; boxes cut by the crop are clipped, those left under 2 px dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from activedet.errors import ActivedetError
from activedet.store import ContentCache

log = logging.getLogger(__name__)


class ImageReadError(ActivedetError):
    """An image file is missing or cannot be decoded."""


def read_image(dataset, image_id: str, uri: str, cache: ContentCache | None = None) -> torch.Tensor:
    """Decode one image as ``uint8 [3, H, W]`` RGB (remote URIs go through the content cache)."""
    cache = cache or ContentCache.default()
    full = dataset.resolve_uri(uri)
    try:
        path = cache.fetch(full)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ActivedetError) as exc:
        raise ImageReadError(f"cannot read image {image_id!r} at {full}: {exc}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _group_boxes(boxes: pa.Table) -> dict[str, np.ndarray]:
    """image_id -> row indices of ``boxes``."""
    ids = np.asarray(boxes.column("image_id").to_pylist(), dtype=object)
    out: dict[str, list[int]] = {}
    for i, iid in enumerate(ids):
        out.setdefault(iid, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def _per_box_fields(inputs):
    """The per-box target tensors SanitizeBoundingBoxes must filter along with the boxes."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "weights", "regress"))


class DetectionDataset(torch.utils.data.Dataset):
    """Images of ``image_ids`` with their boxes as training targets.

    ``boxes`` defaults to the dataset's ground truth; pass a pseudo-label table to train on it
    (a ``reliable`` column, when present, sets ``regress``). ``class_weights`` (category id ->
    weight) and ``box_weight`` give each box's loss weight; ``bg_weight`` that of background
    proposals.
    """

    def __init__(
        self,
        dataset,
        image_ids: list[str],
        *,
        category_ids: list[int],
        boxes: pa.Table | None = None,
        train: bool = True,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] | None = (0.8, 1.25),
        class_weights: Mapping[int, float] | None = None,
        box_weight: float = 1.0,
        bg_weight: float = 1.0,
        crop_size: tuple[int, int] | None = None,
        cache: ContentCache | None = None,
    ):
        self.dataset = dataset
        self.image_ids = list(image_ids)
        self.cache = cache or ContentCache.default()
        boxes = dataset.boxes if boxes is None else boxes
        known = set(self.image_ids)
        mask = pa.array([i in known for i in boxes.column("image_id").to_pylist()], pa.bool_())
        boxes = boxes.filter(mask)
        self._rows = _group_boxes(boxes)
        self._xyxy = np.stack([boxes.column(c).to_numpy().astype(np.float32) for c in ("x1", "y1", "x2", "y2")], 1) if boxes.num_rows else np.zeros((0, 4), np.float32)
        label_of = {c: i + 1 for i, c in enumerate(category_ids)}
        cats = boxes.column("category_id").to_pylist()
        unknown = sorted({c for c in cats if c not in label_of})
        if unknown:
            raise ActivedetError(f"boxes have category ids {unknown} the detector does not know ({category_ids})")
        self._labels = np.asarray([label_of[c] for c in cats], dtype=np.int64)
        cw = dict(class_weights or {})
        self._weights = np.asarray([cw.get(c, 1.0) * box_weight for c in cats], dtype=np.float32)
        if "reliable" in boxes.column_names:
            self._regress = np.asarray([bool(r) if r is not None else True for r in boxes.column("reliable").to_pylist()])
        else:
            self._regress = np.ones(len(cats), dtype=bool)
        self.bg_weight = float(bg_weight)
        index = {iid: i for i, iid in enumerate(dataset.images.column("image_id").to_pylist())}
        missing = [i for i in self.image_ids if i not in index]
        if missing:
            raise ActivedetError(f"{len(missing)} image id(s) not in dataset {dataset.uri}: first {missing[0]!r}")
        uris = dataset.images.column("uri").to_pylist()
        self._uris = [uris[index[i]] for i in self.image_ids]
        steps: list = []
        if train and hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if train and scale_jitter is not None:
            steps.append(v2.RandomAffine(degrees=0.0, scale=tuple(scale_jitter)))
        if train and crop_size is not None:
            # frames smaller than the crop are padded (black) so every crop of a batch has one size
            steps.append(v2.RandomCrop(tuple(int(x) for x in crop_size), pad_if_needed=True))
        steps.append(v2.ClampBoundingBoxes())
        steps.append(v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=_per_box_fields))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int):
        iid = self.image_ids[i]
        img = read_image(self.dataset, iid, self._uris[i], self.cache)
        rows = self._rows.get(iid, np.zeros(0, np.int64))
        h, w = img.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(self._xyxy[rows]), format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(self._labels[rows]),
            "weights": torch.from_numpy(self._weights[rows]),
            "regress": torch.from_numpy(self._regress[rows]),
        }
        img, target = self.transform(tv_tensors.Image(img), target)
        target = {k: v.as_subclass(torch.Tensor) for k, v in target.items()}
        target["bg_weight"] = torch.tensor(self.bg_weight)
        target["image_id"] = iid
        return img.as_subclass(torch.Tensor), target


class InfiniteSampler(Sampler[int]):
    """Endless indices: a fresh seeded permutation per epoch, starting at sample ``start``.

    Deterministic in ``(seed, position)``, so a resumed run continues the same stream.
    """

    def __init__(self, size: int, *, seed: int = 0, start: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ActivedetError("cannot train on an empty image set")
        self.size, self.seed, self.start, self.shuffle = size, seed, start, shuffle

    def __iter__(self) -> Iterator[int]:
        pos = self.start
        while True:
            epoch, offset = divmod(pos, self.size)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                perm = torch.randperm(self.size, generator=g).tolist()
            else:
                perm = list(range(self.size))
            for idx in perm[offset:]:
                yield idx
                pos += 1


def collate(batch):
    """``[(image, target), ...]`` -> ``(list[image], list[target])`` (torchvision's detection input)."""
    images, targets = zip(*batch, strict=False)
    return list(images), list(targets)


class RankBatches:
    """Batches of rank ``rank``: slice ``rank`` of each global batch of ``batch_size * world_size`` indices.

    The global stream is the one-process stream at the global batch size, so the union of the
    ranks' batch ``i`` is the batch ``i`` one process would train on with ``batch_size * world_size``.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, rank: int = 0, world_size: int = 1):
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        it, size = iter(self.sampler), self.batch_size * self.world_size
        while True:
            chunk = [next(it) for _ in range(size)]
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


def endless_batches(
    data: torch.utils.data.Dataset, *, batch_size: int, seed: int = 0, start_iter: int = 0, num_workers: int = 0,
    rank: int = 0, world_size: int = 1,
) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
    """Endless ``(images, targets)`` batches; ``start_iter`` skips the batches a resumed run saw.

    With ``world_size`` > 1, ``batch_size`` images per rank: rank ``rank``'s share of each global
    batch (:class:`RankBatches`), augmented with a rank-specific random stream.
    """
    sampler = InfiniteSampler(len(data), seed=seed, start=start_iter * batch_size * world_size)
    torch.manual_seed(seed + start_iter + 7919 * rank)  # augmentation randomness in the main process
    loader = DataLoader(
        data,
        batch_sampler=RankBatches(sampler, batch_size, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed + start_iter + 7919 * rank),
    )
    yield from loader


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
