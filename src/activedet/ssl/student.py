"""The train-student-SSL stage: teacher weights, balanced labeled + pseudo-labeled batches.

Pieces (public for tests and benchmarks):

* :class:`StrongView` -- a pseudo-labeled :class:`~activedet.models.data.DetectionDataset`
  (weak view: flip + zoom, boxes move) with the strong photometric augmentation on top;
* :func:`balanced_batches` -- endless ``(images, targets)`` batches drawn by
  :class:`~activedet.ssl.sampler.BalancedBatchSampler`; targets carry ``pseudo`` (bool);
* :func:`ssl_loss` -- ``L = L_s + lambda_u * L_u`` as a loss function for
  :class:`~activedet.models.train.Trainer` (two forward passes: labeled images, then pseudo-labeled
  ones, so ``lambda_u`` scales every unsupervised term, RPN included). Per-class ``alpha_m``
  reaches the box head through the targets' ``weights``; uncertain boxes have ``regress=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import pyarrow as pa
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision import tv_tensors

from activedet.errors import ActivedetError
from activedet.ssl.augment import StrongParams, strong_transform
from activedet.ssl.sampler import BalancedBatchSampler

log = logging.getLogger(__name__)

SUP, UNSUP = "sup/", "unsup/"


class StrongView(Dataset):
    """Items of ``base`` with the strong augmentation on the image (boxes are unchanged by it)."""

    def __init__(self, base: Dataset, params: StrongParams | None):
        self.base = base
        self.transform = strong_transform(params) if params is not None else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, target = self.base[i]
        if self.transform is not None:
            image = self.transform(tv_tensors.Image(image)).as_subclass(Tensor).clamp(0.0, 1.0)
        return image, {**target, "pseudo": True}


class _Marked(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, target = self.base[i]
        return image, {**target, "pseudo": False}


class _BatchIndices:
    """Batch sampler over ``ConcatDataset([labeled, pseudo])`` from :class:`BalancedBatchSampler`."""

    def __init__(self, sampler: BalancedBatchSampler, offset: int, start: int):
        self.sampler, self.offset, self.start = sampler, offset, start

    def __iter__(self) -> Iterator[list[int]]:
        for lab, unl in self.sampler.iter_batches(self.start):
            yield lab + [self.offset + u for u in unl]


def _collate(batch):
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def balanced_batches(
    labeled: Dataset, pseudo: Dataset | None, *, batch_size: int, labeled_fraction: float, seed: int = 0,
    start_iter: int = 0, num_workers: int = 0, rank: int = 0, world_size: int = 1,
) -> Iterator[tuple[list[Tensor], list[dict]]]:
    """Endless balanced batches; ``start_iter`` continues a resumed run's sequence.

    ``rank`` / ``world_size``: this replica's ``batch_size`` images, with the labeled share kept per replica.
    """
    n_pseudo = len(pseudo) if pseudo is not None else 0  # type: ignore[arg-type]
    sampler = BalancedBatchSampler(len(labeled), n_pseudo, batch_size, labeled_fraction=labeled_fraction, seed=seed,  # type: ignore[arg-type]
                                   rank=rank, world_size=world_size)
    parts = [_Marked(labeled)] + ([pseudo] if pseudo is not None and n_pseudo else [])
    data = ConcatDataset(parts)
    torch.manual_seed(seed + start_iter + 7919 * rank)  # augmentation randomness in the main process
    loader = DataLoader(
        data,
        batch_sampler=_BatchIndices(sampler, len(labeled), start_iter),  # type: ignore[arg-type]
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed + start_iter + 7919 * rank),
    )
    yield from loader


def ssl_loss(lambda_u: float = 1.0):
    """A :class:`Trainer` loss function: supervised losses + ``lambda_u`` x unsupervised losses.

    Targets with ``pseudo=True`` form the unsupervised part. Keys of the returned dict are the
    model's loss names prefixed ``sup/`` and ``unsup/`` (the latter already multiplied by
    ``lambda_u``), so their sum is ``L``.
    """

    def loss_fn(model: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for prefix, want, weight in ((SUP, False, 1.0), (UNSUP, True, lambda_u)):
            idx = [i for i, t in enumerate(targets) if bool(t.get("pseudo", False)) == want]
            if not idx or weight == 0:
                continue
            losses = model([images[i] for i in idx], [targets[i] for i in idx])
            out.update({prefix + k: v * weight for k, v in losses.items()})
        return out

    return loss_fn


def class_weights_from(thresholds: Mapping) -> dict[int, float]:
    """``{category_id: alpha_m}`` from a ``thresholds.json`` document (1 where not given)."""
    return {int(c): float(s.get("weight", 1.0)) for c, s in thresholds.get("classes", {}).items()}


def student_pool(pseudo: pa.Table, pool: list[str], *, uncertain_boxes: str = "classification",
                 empty_as_background: bool = True) -> tuple[pa.Table, list[str]]:
    """The pseudo boxes and pool images the student trains on.

    ``uncertain_boxes="ignore"`` drops rows with ``reliable == False``; pool images left without
    pseudo boxes stay in (trained as background) only with ``empty_as_background``.
    """
    if uncertain_boxes == "ignore" and "reliable" in pseudo.column_names:
        pseudo = pseudo.filter(pa.array([r is not False for r in pseudo.column("reliable").to_pylist()], pa.bool_()))
    with_boxes = set(pseudo.column("image_id").to_pylist())
    ids = sorted(set(pool) if empty_as_background else with_boxes & set(pool))
    return pseudo, ids


def train_student(config) -> dict:
    """Run the stage (``config``: :class:`activedet.stages.train_student_ssl.Config`)."""
    from activedet.al.ledger import read_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models import distributed
    from activedet.models.checkpoint import load_detector
    from activedet.models.data import DetectionDataset
    from activedet.models.predict import resolve_device
    from activedet.models.presets import check_crop
    from activedet.models.train import data_digest, seed_everything, train_and_commit
    from activedet.ssl.pseudo_labels import read_pseudo_labels, split_sets
    from activedet.tracking import NullTracker, tracker_for

    dataset = load_dataset(config.dataset_uri)
    ledger, _ = read_ledger(config.ledger_uri)
    labeled, pool = split_sets(dataset, ledger)
    if not labeled:
        raise ActivedetError(f"train-student-ssl: no labeled train images in ledger {config.ledger_uri}")
    pseudo, thresholds, pseudo_pool = read_pseudo_labels(config.pseudo_labels_uri, dataset)
    pseudo, pool_ids = student_pool(
        pseudo, pseudo_pool if pseudo_pool is not None else pool,
        uncertain_boxes=config.uncertain_boxes, empty_as_background=config.empty_as_background,
    )
    weights = class_weights_from(thresholds) if config.use_class_weights else {}
    digest = data_digest(config.dataset_uri, labeled + [f"u:{i}" for i in pool_ids])

    device = resolve_device(config.device)
    rank = distributed.init_process_group(device)  # no-op unless this process is one rank of several
    device = distributed.worker_device(device)
    seed_everything(config.seed)
    detector = load_detector(config.teacher_checkpoint_uri, dataset=dataset)
    check_crop(config.crop_size, detector.model, where="train-student-ssl")
    detector.model.to(device)
    parents = list(config.parent_run_ids) + [p for p in detector.meta.get("parent_run_ids", []) if p not in config.parent_run_ids]
    tracker = tracker_for(config, run_name="train-student-ssl") if rank.is_main else NullTracker()
    tracker.log_params(
        {k: v for k, v in config.model_dump(mode="json").items() if k not in ("mlflow_tracking_uri", "mlflow_run_id")}
        | {"labeled_images": len(labeled), "pseudo_images": len(pool_ids), "pseudo_boxes": pseudo.num_rows,
           "filter": thresholds.get("filter"), "data_digest": digest}
    )
    if not pool_ids:
        log.warning("train-student-ssl: no pseudo-labeled images: training on labeled images only")
    strong = config.strong_augmentation
    params = StrongParams(**strong.model_dump(exclude={"enabled"})) if strong.enabled else None
    lab_data = DetectionDataset(dataset, labeled, category_ids=detector.category_ids, hflip=config.hflip, scale_jitter=config.scale_jitter,
                                crop_size=config.crop_size)
    pseudo_data = (
        StrongView(
            DetectionDataset(
                dataset, pool_ids, category_ids=detector.category_ids, boxes=pseudo, hflip=config.hflip,
                scale_jitter=config.scale_jitter, class_weights=weights, crop_size=config.crop_size,
            ),
            params,
        )
        if pool_ids
        else None
    )
    if tracker.run_id:
        parents.append(tracker.run_id)
    done = train_and_commit(
        config, detector,
        lambda start: balanced_batches(
            lab_data, pseudo_data, batch_size=config.batch_size, labeled_fraction=config.labeled_fraction,
            seed=config.seed, start_iter=start, num_workers=config.num_workers, rank=rank.rank, world_size=rank.world_size,
        ),
        stage="train-student-ssl", digest=digest, device=device, tracker=tracker, loss_fn=ssl_loss(config.lambda_u),
        training_info={"labeled_images": len(labeled), "pseudo_images": len(pool_ids), "pseudo_boxes": pseudo.num_rows,
                       "class_weights": {str(k): v for k, v in weights.items()}},
        init_checkpoint_uri=config.teacher_checkpoint_uri, pseudo_labels_uri=config.pseudo_labels_uri, parent_run_ids=parents,
    )
    if done is None:  # not rank 0
        return None
    return {
        "checkpoint_uri": done.checkpoint_uri,
        "iterations": config.iterations,
        "resumed_from": done.resumed_from,
        "final_loss": done.result.final_loss,
        "it_per_s": done.result.it_per_s,
        "labeled_images": len(labeled),
        "pseudo_images": len(pool_ids),
        "pseudo_boxes": pseudo.num_rows,
    }
