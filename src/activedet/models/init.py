"""Starting a detector from pretrained weights: ImageNet backbones and detectors of other classes.

* :func:`load_backbone_weights` -- ``backbone_weights`` (``imagenet`` or a state-dict file, see
  :mod:`activedet.models.weights`) into ``model.backbone.body``; the classifier head is dropped.
* :func:`load_init_checkpoint` -- ``init_checkpoint``: an activedet checkpoint, a torchvision
  detection weights name (``fasterrcnn_resnet50_fpn`` = its default COCO weights, or
  ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``) or a state-dict file of the whole detector. The
  backbone, FPN, RPN and box head load; the class-specific predictor
  (``roi_heads.box_predictor``) is re-initialised when the classes differ (always for torchvision's
  COCO weights, when the shapes differ for a bare state dict, whose classes are unknown).

Both are partial loads that return a :class:`LoadReport` (matched / missing / unexpected /
wrong-shape tensor counts, logged and recorded in the checkpoint's ``meta.json``), and fail with
a one-line :class:`~activedet.models.weights.WeightsError` when fewer than ``min_backbone_match``
of the model's backbone-body tensors matched: a wrong file never trains silently. BatchNorm's
``num_batches_tracked`` counters are not tensors of the model's function and are not counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from activedet import store
from activedet.models.checkpoint import (
    META,
    Detector,
    check_head,
    committed_checkpoint,
    read_checkpoint_meta,
    read_state,
)
from activedet.models.presets import BACKBONE_KEYS, PRETRAINED_DEFAULTS
from activedet.models.weights import (
    WeightsError,
    WeightsSource,
    backbone_state,
    load_torchvision_weights,
    read_state_uri,
    torchvision_weights,
)

log = logging.getLogger(__name__)

BODY = "backbone.body."
PREDICTOR = "roi_heads.box_predictor."
DEFAULT_MIN_BACKBONE_MATCH = 0.9
_SKIP = ("num_batches_tracked",)


@dataclass
class LoadReport:
    """What a partial load did. Counts are tensors; ``examples`` name a few of each kind."""

    matched: int
    missing: int
    unexpected: int
    wrong_shape: int
    backbone_matched: int
    backbone_total: int
    predictor_reinitialised: bool = False
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def backbone_share(self) -> float:
        return self.backbone_matched / self.backbone_total if self.backbone_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "backbone_share": round(self.backbone_share, 4)}

    def summary(self) -> str:
        return (
            f"{self.matched} matched, {self.missing} missing, {self.unexpected} unexpected, {self.wrong_shape} wrong shape; "
            f"backbone {self.backbone_matched}/{self.backbone_total}"
            + ("; predictor re-initialised" if self.predictor_reinitialised else "")
        )


def _counted(keys) -> list[str]:
    return [k for k in keys if not k.endswith(_SKIP)]


def partial_load(module: torch.nn.Module, state: dict[str, torch.Tensor], *, backbone_prefix: str = BODY) -> LoadReport:
    """Copy every tensor of ``state`` whose key and shape fit ``module``; report the rest.

    ``backbone_prefix`` selects the module keys counted as backbone ('' = all of them)."""
    own = module.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    wrong = _counted(k for k in state if k in own and k not in fits)
    unexpected = _counted(k for k in state if k not in own)
    missing = _counted(k for k in own if k not in fits and k not in wrong)
    module.load_state_dict(fits, strict=False)
    backbone = _counted(k for k in own if k.startswith(backbone_prefix))
    return LoadReport(
        matched=len(_counted(fits)), missing=len(missing), unexpected=len(unexpected), wrong_shape=len(wrong),
        backbone_matched=sum(1 for k in backbone if k in fits), backbone_total=len(backbone),
        examples={"missing": missing[:5], "unexpected": unexpected[:5], "wrong_shape": wrong[:5]},
    )


def _check_share(report: LoadReport, *, what: str, min_backbone_match: float) -> None:
    log.info("%s: %s", what, report.summary())
    if report.backbone_share < min_backbone_match:
        hint = report.examples.get("unexpected") or report.examples.get("wrong_shape") or report.examples.get("missing")
        raise WeightsError(
            f"{what}: only {report.backbone_matched}/{report.backbone_total} backbone tensors matched "
            f"(need {min_backbone_match:.0%}; e.g. {hint[:2] if hint else []}): wrong file for this preset?"
        )


FINETUNE_OPTIONS = ("frozen_bn", "freeze_at", "image_mean", "image_std")


def pretrained_options(
    preset: str, options: dict[str, Any], *, backbone_weights: str | None, init_checkpoint: str | None
) -> dict[str, Any]:
    """The preset options to build with: ``options`` plus, where unset, the fine-tuning options.

    From pretrained weights (ImageNet, torchvision, a state-dict file): :data:`PRETRAINED_DEFAULTS`
    (frozen BN, ``freeze_at=2``). From an activedet checkpoint (a warm start): that checkpoint's own
    fine-tuning options, so a model keeps its architecture from cycle to cycle."""
    from activedet.models.backend import DETECTRON2, backend_name

    if preset not in BACKBONE_KEYS and backend_name(preset) != DETECTRON2:
        return dict(options)
    inherited: dict[str, Any] = {}
    if init_checkpoint and is_activedet_checkpoint(init_checkpoint):
        their_meta = read_checkpoint_meta(str(init_checkpoint).rstrip("/"))
        theirs = their_meta.get("options", {})
        if backend_name(their_meta["preset"]) == backend_name(preset):  # another backend's options do not apply
            inherited = {k: theirs[k] for k in FINETUNE_OPTIONS if k in theirs}
    elif backbone_weights or init_checkpoint:
        inherited = dict(PRETRAINED_DEFAULTS)
    return {**inherited, **options}


def load_backbone_weights(
    detector: Detector, spec: str, *, min_backbone_match: float = DEFAULT_MIN_BACKBONE_MATCH
) -> dict[str, Any]:
    """Load ImageNet / state-dict weights into the backbone body; returns the ``meta.json`` record."""
    mapper = BACKBONE_KEYS.get(detector.preset)
    if mapper is None:
        raise WeightsError(
            f"backbone_weights: preset {detector.preset!r} has no pretrained backbone (use one of {', '.join(sorted(BACKBONE_KEYS))})"
        )
    state, source = backbone_state(detector.preset, spec)
    if any(k.startswith(BODY) for k in state):  # a whole detector's state dict: take its body
        state = {k[len(BODY):]: v for k, v in state.items() if k.startswith(BODY)}
    report = partial_load(detector.model.backbone.body, mapper(state), backbone_prefix="")
    _check_share(report, what=f"backbone_weights {spec}", min_backbone_match=min_backbone_match)
    return {**source.to_dict(), "report": report.to_dict()}


def _is_torchvision_name(spec: str) -> bool:
    if "://" in spec or "/" in spec or Path(spec).exists():
        return False
    return "." not in spec.split("_Weights.")[0] and not spec.endswith((".pth", ".pt", ".safetensors", ".bin"))


def is_activedet_checkpoint(spec: str) -> bool:
    return store.exists(store.join(str(spec).rstrip("/"), META))


def _torchvision_detection_weights(spec: str):
    """``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` or a model name (its default weights)."""
    from torchvision.models import get_model_weights

    if "_Weights." in spec:
        return torchvision_weights(*spec.split(".", 1))
    try:
        return get_model_weights(spec).DEFAULT
    except (ValueError, KeyError):
        raise WeightsError(f"init_checkpoint {spec!r}: not a checkpoint, a weights file or a torchvision model name") from None


def _activedet_checkpoint(spec: str, detector: Detector) -> tuple[dict, dict, bool] | None:
    """(state, source record, same classes) of an activedet checkpoint at ``spec``, else None."""
    folder = spec.rstrip("/")
    if not is_activedet_checkpoint(folder):
        return None
    meta = read_checkpoint_meta(folder)
    state = read_state(folder)
    prefix, manifest, sub = committed_checkpoint(folder)
    entry = manifest["files"].get(store.join(sub, "model.safetensors").lstrip("/"), {})
    same = (list(meta["category_ids"]), list(meta["class_names"])) == (detector.category_ids, detector.class_names)
    if same:  # its predictor would be loaded: it must be the same kind of box head (other classes: re-initialised)
        check_head(meta, detector, where=spec)
    record = WeightsSource(spec, store.join(prefix, sub, "model.safetensors"), entry.get("sha256", ""), meta["preset"]).to_dict()
    return state, {**record, "meta": meta}, same


def load_init_checkpoint(
    detector: Detector, spec: str, *, min_backbone_match: float = DEFAULT_MIN_BACKBONE_MATCH
) -> dict[str, Any]:
    """Start ``detector`` from ``spec`` (see module docstring); returns the ``meta.json`` record
    (source, sha256, load report; ``meta`` holds an activedet checkpoint's own meta.json)."""
    spec = str(spec)
    found = _activedet_checkpoint(spec, detector)
    if found is not None:
        state, record, same_classes = found
    elif _is_torchvision_name(spec):
        weights = _torchvision_detection_weights(spec)
        state, source = load_torchvision_weights(weights, spec=spec)
        record, same_classes = source.to_dict(), False
    else:
        state, source = read_state_uri(spec)
        record, same_classes = source.to_dict(), None  # unknown: the predictor loads when its shapes fit
    reinit = same_classes is False
    backend = detector.backend
    if found is None:  # a foreign file: the backend maps its names (detectron2: its own matching heuristics)
        state = backend.import_state(detector.model, state)
    if reinit:
        state = {k: v for k, v in state.items() if not k.startswith(PREDICTOR)}
    report = partial_load(detector.model, state, backbone_prefix=backend.backbone_prefix)
    own_predictor = [k for k in detector.model.state_dict() if k.startswith(PREDICTOR)]
    report.predictor_reinitialised = reinit or any(k not in state or state[k].shape != detector.model.state_dict()[k].shape for k in own_predictor)
    _check_share(report, what=f"init_checkpoint {spec}", min_backbone_match=min_backbone_match)
    meta = record.pop("meta", {})
    parents = [p for p in [*meta.get("parent_run_ids", []), meta.get("mlflow_run_id")] if p]
    inherited = {"inherited": meta["weights_init"]} if meta.get("weights_init") else {}  # where that model started
    return {**record, "report": report.to_dict(), **inherited, "parent_run_ids": parents}
