"""Batched inference shared by evaluation, pseudo-labeling and scoring.

:class:`Predictor` runs a :class:`~activedet.models.checkpoint.Detector` over images of a dataset
and yields one :class:`~activedet.models.types.ImagePrediction` per image, with the full class
distribution of every detection and, on request, pre-NMS candidates (``merged_into``), flip-TTA
detections mapped back to the original frame, MC-dropout distributions of the kept boxes and a
pooled L2-normalised backbone embedding. :func:`predictions_to_boxes_table` turns predictions into
a validated boxes table (``source = pred``, with ``class_probs``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from activedet import schema
from activedet.errors import ConfigError
from activedet.models.checkpoint import Detector
from activedet.models.data import read_image
from activedet.models.types import Detections, ImagePrediction, loc_quality_values
from activedet.progress import Progress
from activedet.store import ContentCache

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown torch device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror xyxy boxes horizontally in an image of ``width`` pixels."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class Predictor:
    """Batched inference with a detector.

    ``score_floor`` drops class scores at or below it before NMS, ``nms_iou`` is the per-class
    NMS IoU, ``max_dets`` caps detections per image. After :meth:`predict` is exhausted,
    ``images_per_s`` holds its throughput.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        score_floor: float = 0.05,
        nms_iou: float = 0.5,
        max_dets: int = 100,
        cache: ContentCache | None = None,
    ):
        self.detector = detector
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.score_floor, self.nms_iou, self.max_dets = score_floor, nms_iou, max_dets
        self.cache = cache or ContentCache.default()
        self.images_per_s = 0.0
        detector.model.to(self.device)

    # ------------------------------------------------------------------ public API

    def predict(
        self,
        dataset,
        image_ids: Iterable[str] | None = None,
        *,
        flip_tta: bool = False,
        pre_nms: bool = False,
        embeddings: bool = False,
        mc_samples: int = 0,
    ) -> Iterator[ImagePrediction]:
        """Predict every image of ``image_ids`` (default: all images of ``dataset``), in order."""
        ids = list(dataset.images.column("image_id").to_pylist() if image_ids is None else image_ids)
        index = {iid: i for i, iid in enumerate(dataset.images.column("image_id").to_pylist())}
        uris = dataset.images.column("uri").to_pylist()
        missing = [i for i in ids if i not in index]
        if missing:
            from activedet.errors import ActivedetError

            raise ActivedetError(f"{len(missing)} image id(s) not in dataset {dataset.uri}: first {missing[0]!r}")
        with Progress(len(ids), "predict", unit="img") as bar:
            for start in range(0, len(ids), self.batch_size):
                chunk = ids[start : start + self.batch_size]
                images = [read_image(dataset, i, uris[index[i]], self.cache) for i in chunk]
                yield from self.predict_images(
                    images, chunk, flip_tta=flip_tta, pre_nms=pre_nms, embeddings=embeddings, mc_samples=mc_samples
                )
                bar.update(len(chunk))
            self.images_per_s = bar.rate
        log.info("predicted %d images at %.1f images/s", len(ids), self.images_per_s)

    @torch.inference_mode()
    def predict_images(
        self,
        images: list[torch.Tensor],
        image_ids: list[str],
        *,
        flip_tta: bool = False,
        pre_nms: bool = False,
        embeddings: bool = False,
        mc_samples: int = 0,
    ) -> list[ImagePrediction]:
        """Predict a batch of images (``uint8`` or float in [0, 1], ``[3, H, W]``)."""
        self.detector.model.eval()
        images = [self._as_float(im) for im in images]
        main = self._forward(images, pre_nms=pre_nms, embeddings=embeddings, mc_samples=mc_samples)
        flipped = self._forward([im.flip(-1) for im in images]) if flip_tta else None
        out = []
        for k, (iid, im) in enumerate(zip(image_ids, images, strict=False)):
            h, w = im.shape[-2:]
            r = main[k]
            pred = ImagePrediction(image_id=iid, width=int(w), height=int(h), detections=self._dets(r, ""))
            if pre_nms:
                pred.pre_nms = self._dets(r, "pre_")
                pred.merged_into = r["merged_into"].cpu().numpy().astype(np.int64)
            if flipped is not None:
                d = self._dets(flipped[k], "")
                d.boxes = flip_boxes(d.boxes, int(w))
                pred.flipped = d
            if mc_samples:
                pred.mc_probs = r["mc_probs"].cpu().numpy().astype(np.float32)
            if embeddings:
                pred.embedding = r["embedding"].cpu().numpy().astype(np.float32)
            out.append(pred)
        return out

    # ------------------------------------------------------------------ internals

    def _as_float(self, im: torch.Tensor) -> torch.Tensor:
        im = im.to(self.device)
        return im.float() / 255.0 if im.dtype == torch.uint8 else im.float()

    def _dets(self, r: dict, prefix: str) -> Detections:
        labels = r[f"{prefix}labels"].cpu().numpy()
        quality = r.get(f"{prefix}loc_quality")  # certainty head only
        return Detections(
            boxes=r[f"{prefix}boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4),
            labels=self.detector.labels_to_categories(labels).astype(np.int64),
            scores=r[f"{prefix}scores"].cpu().numpy().astype(np.float32),
            class_probs=r[f"{prefix}probs" if prefix else "class_probs"].cpu().numpy().astype(np.float32),
            loc_quality=None if quality is None else quality.cpu().numpy().astype(np.float32),
        )

    def _forward(self, images, *, pre_nms=False, embeddings=False, mc_samples=0) -> list[dict]:
        """The detector's backend runs the model (boxes back in the input frame)."""
        return self.detector.backend.predict(
            self.detector.model, images, score_floor=self.score_floor, nms_iou=self.nms_iou, max_dets=self.max_dets,
            pre_nms=pre_nms, embeddings=embeddings, mc_samples=mc_samples,
        )


def predictions_to_boxes_table(
    preds: Iterable[ImagePrediction], dataset=None, *, source: str = "pred", class_probs: bool = True
) -> pa.Table:
    """Final detections of ``preds`` as a validated boxes table (optionally with ``class_probs``).

    ``loc_quality`` is always a column: the certainty head's ``v``, null for the standard head."""
    ids, boxes, cats, scores, probs, quality = [], [], [], [], [], []
    for p in preds:
        d = p.detections
        ok = (d.boxes[:, 2] > d.boxes[:, 0]) & (d.boxes[:, 3] > d.boxes[:, 1])
        ids += [p.image_id] * int(ok.sum())
        boxes.append(d.boxes[ok])
        cats.append(d.labels[ok])
        scores.append(np.clip(d.scores[ok], 0.0, 1.0))
        probs += [row.tolist() for row in d.class_probs[ok]]
        quality += loc_quality_values(d, ok)
    xyxy = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    extra: dict = {"loc_quality": quality}
    if class_probs:
        extra["class_probs"] = probs
    table = schema.boxes_from_arrays(
        ids,
        xyxy,
        np.concatenate(cats) if cats else np.zeros(0, np.int32),
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        source=source,
        extra=extra,
    )
    table, _ = schema.validate_boxes(
        table,
        images=dataset.images if dataset is not None else None,
        categories=dataset.categories if dataset is not None else None,
        where="predictions",
    )
    return table
