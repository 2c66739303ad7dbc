"""The detectron2 backend: a detectron2 ``GeneralizedRCNN`` (Faster R-CNN) behind activedet's calls.

Presets (registered in :mod:`activedet.models.presets`, built here):

* ``d2_faster_rcnn_R_50_FPN`` -- detectron2's model-zoo ``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``;
* ``d2_config`` -- a user's detectron2 YAML config (``config_file``, a local path or ``s3://`` URI;
  ``_BASE_`` files resolve next to it; YAML is parsed with ``safe_load`` only).

Both take ``overrides`` (detectron2 config keys -> values, e.g. ``{"MODEL.RESNETS.DEPTH": 18}``,
applied with ``merge_from_list``), ``min_size`` / ``max_size`` (short side / cap, train and test;
default: the config's ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), ``frozen_bn`` / ``freeze_at``
(``MODEL.RESNETS.NORM`` FrozenBN vs BN, ``MODEL.BACKBONE.FREEZE_AT``; default from scratch: BN, 0,
like activedet's torchvision presets; with pretrained weights the train-teacher stage fills in
FrozenBN and 2, detectron2's defaults) and ``dropout_p`` / ``train_dropout`` (an MC-dropout layer
after the box head's last FC layer; off in training unless ``train_dropout``, on in MC passes).
``NUM_CLASSES`` comes from the dataset; the checkpoint records the resolved config as
``config_yaml``, so later stages rebuild it without the original file.

:class:`D2RCNN` is the model: ``model(images, targets)`` in train mode gives detectron2's four
losses (``loss_rpn_cls``, ``loss_rpn_loc``, ``loss_cls``, ``loss_box_reg``), with the box-head
terms weighted per box like :class:`~activedet.models.roi_heads.WeightedRoIHeads` (``weights``,
``regress``, ``bg_weight``; equal to detectron2's own losses when all are 1). In the RPN, as
torchvision's :class:`~activedet.models.rpn.MaskedRPN` does, boxes that may not be regressed
(``regress`` False, weight 0) give no ``loss_rpn_loc``; objectness is not weighted. Images are resized to ``min_size`` here,
as detectron2's data mapper would, and normalised with the config's pixel mean/std and
``INPUT.FORMAT`` (BGR for the model zoo). Its state dict uses detectron2's own key names, so
detectron2 checkpoints load onto it directly.

detectron2 is imported only here and only when a ``d2_*`` preset is built.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activedet.errors import ConfigError
from activedet.models.backend import DETECTRON2, finish_results, pooled_embedding

log = logging.getLogger(__name__)

ZOO_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
INSTALL_HINT = (
    "install it from its repository as its documentation says (pip install 'git+https://github.com/facebookresearch/detectron2.git' "
    "'setuptools<80'), see docs/backends.md"
)


def require_detectron2():
    """Import detectron2 (and its model zoo, which needs ``pkg_resources``) or fail in one line."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import model_zoo  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the detectron2 backend needs detectron2 ({exc}); {INSTALL_HINT}") from None
    import detectron2

    return detectron2


# --------------------------------------------------------------------------- config


def _merge_file(cfg, path: Path, where: str) -> None:
    """Merge a YAML file into ``cfg`` (``safe_load`` only; ``_BASE_`` resolves next to it)."""
    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except Exception as exc:  # yaml / yacs / detectron2 raise many kinds for a bad config
        raise ConfigError(f"{where}: not a usable detectron2 config: {_first_line(exc)}") from None


def _merge_text(cfg, text: str, where: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        _merge_file(cfg, path, where)


def _merge_config_file(cfg, uri: str) -> None:
    """A user's config at a local path or ``s3://`` URI (an s3 one cannot have a relative ``_BASE_``)."""
    from activedet import store

    where = f"preset_options.config_file {uri}"
    if not uri.endswith((".yaml", ".yml")):
        raise ConfigError(f"{where}: only detectron2 YAML configs are supported (not LazyConfig .py)")
    if store.is_s3(uri):
        _merge_text(cfg, store.read_bytes(uri).decode(), where)
        return
    path = Path(store.local_path(uri))
    if not path.is_file():
        raise ConfigError(f"{where}: file not found")
    _merge_file(cfg, path, where)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _overrides_list(overrides: dict[str, Any] | None) -> list:
    out: list = []
    for key, value in (overrides or {}).items():
        out += [str(key), list(value) if isinstance(value, tuple) else value]
    return out


def make_config(
    *, num_classes: int, zoo_config: str | None = None, config_file: str | None = None, config_yaml: str | None = None,
    overrides: dict[str, Any] | None = None, min_size: int | None = None, max_size: int | None = None,
    frozen_bn: bool | None = None, freeze_at: int | None = None,
):
    """The detectron2 ``CfgNode`` of a preset: base config, then the options, then ``overrides``."""
    require_detectron2()
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    if config_yaml is not None:  # a checkpoint's resolved config: complete, no _BASE_
        _merge_text(cfg, config_yaml, "checkpoint config_yaml")
    elif config_file is not None:
        _merge_config_file(cfg, str(config_file))
    elif zoo_config is not None:
        cfg.merge_from_file(model_zoo.get_config_file(zoo_config), allow_unsafe=False)
    else:
        raise ConfigError("preset d2_config: set preset_options.config_file (a detectron2 YAML config)")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = int(num_classes) - 1
    if min_size is not None:
        cfg.INPUT.MIN_SIZE_TEST = int(min_size)
        cfg.INPUT.MIN_SIZE_TRAIN = (int(min_size),)
    if max_size is not None:
        cfg.INPUT.MAX_SIZE_TEST = cfg.INPUT.MAX_SIZE_TRAIN = int(max_size)
    if frozen_bn is not None:
        cfg.MODEL.RESNETS.NORM = "FrozenBN" if frozen_bn else "BN"
    if freeze_at is not None:
        cfg.MODEL.BACKBONE.FREEZE_AT = int(freeze_at)
    try:
        cfg.merge_from_list(_overrides_list(overrides))
    except Exception as exc:  # yacs: KeyError for unknown keys, ValueError for types
        raise ConfigError(f"preset_options.overrides: {_first_line(exc)}") from None
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = int(num_classes) - 1  # the dataset decides, not an override
    _check_supported_config(cfg)
    cfg.freeze()
    return cfg


def _check_supported_config(cfg) -> None:
    m = cfg.MODEL
    if m.META_ARCHITECTURE != "GeneralizedRCNN" or m.MASK_ON or m.KEYPOINT_ON or m.LOAD_PROPOSALS:
        raise ConfigError(
            "detectron2 config: only box detection with GeneralizedRCNN (no masks, keypoints or precomputed proposals) "
            f"is supported, got META_ARCHITECTURE={m.META_ARCHITECTURE} MASK_ON={m.MASK_ON} KEYPOINT_ON={m.KEYPOINT_ON}"
        )
    if m.PROPOSAL_GENERATOR.NAME != "RPN":
        raise ConfigError(f"detectron2 config: MODEL.PROPOSAL_GENERATOR.NAME {m.PROPOSAL_GENERATOR.NAME}: only RPN is supported")
    if m.ROI_HEADS.NAME != "StandardROIHeads":
        raise ConfigError(f"detectron2 config: MODEL.ROI_HEADS.NAME {m.ROI_HEADS.NAME}: only StandardROIHeads is supported")
    if m.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE != "smooth_l1" or m.ROI_BOX_HEAD.get("USE_SIGMOID_CE", False):
        raise ConfigError("detectron2 config: the box head needs BBOX_REG_LOSS_TYPE smooth_l1 and softmax CE (per-box weights)")


# --------------------------------------------------------------------------- model


@contextmanager
def _event_storage():
    """detectron2's heads log statistics into an EventStorage while training: give them a throwaway one."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        yield


class D2RCNN(nn.Module):
    """A detectron2 Faster R-CNN with activedet's calling convention (see module docstring).

    Submodules ``backbone``, ``proposal_generator`` and ``roi_heads`` are detectron2's own, so
    ``state_dict`` keys are detectron2's (``backbone.bottom_up.res2...``, ``roi_heads.box_predictor...``).
    """

    def __init__(self, rcnn: nn.Module, cfg, *, recorded_options: dict[str, Any]):
        super().__init__()
        self.backbone = rcnn.backbone
        self.proposal_generator = rcnn.proposal_generator
        self.roi_heads = rcnn.roi_heads
        self.register_buffer("pixel_mean", rcnn.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", rcnn.pixel_std.detach().clone(), persistent=False)
        self.min_size = int(cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.recorded_options = recorded_options

    @property
    def num_classes(self) -> int:
        """Foreground classes C."""
        return int(self.roi_heads.num_classes)

    def preprocess(self, images: list[Tensor]):
        """``[3, H, W]`` float [0, 1] RGB -> detectron2 ``ImageList`` (resized, normalised, padded) and per-image scales."""
        from detectron2.structures import ImageList

        tensors, scales = [], []
        for im in images:
            h, w = im.shape[-2:]
            s = min(self.min_size / min(h, w), self.max_size / max(h, w))
            nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            x = F.interpolate(im[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0] * 255.0
            if self.input_format == "BGR":
                x = x.flip(0)
            tensors.append((x - self.pixel_mean) / self.pixel_std)
            scales.append((nw / w, nh / h))
        il = ImageList.from_tensors(
            tensors, self.backbone.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )
        return il, scales

    def _instances(self, target: dict, scale: tuple[float, float], size: tuple[int, int]):
        from detectron2.structures import Boxes, Instances

        boxes = target["boxes"].float().reshape(-1, 4)
        sx, sy = scale
        inst = Instances(size)
        inst.gt_boxes = Boxes(boxes * boxes.new_tensor([sx, sy, sx, sy]))
        inst.gt_classes = target["labels"].to(torch.int64) - 1  # activedet 1..C -> detectron2 0..C-1
        n = len(boxes)
        w = target.get("weights")
        r = target.get("regress")
        inst.gt_weights = w.float() if w is not None else boxes.new_ones(n)
        inst.gt_regress = r.bool() if r is not None else torch.ones(n, dtype=torch.bool, device=boxes.device)
        return inst

    def forward(self, images: list[Tensor], targets: list[dict] | None = None) -> dict[str, Tensor]:
        """Training losses (train mode, with ``targets``); use the backend's ``predict`` for inference."""
        if not self.training or targets is None:
            raise RuntimeError("D2RCNN.forward computes training losses; predict through Detectron2Backend.predict")
        il, scales = self.preprocess(images)
        gt = [self._instances(t, s, tuple(size)) for t, s, size in zip(targets, scales, il.image_sizes, strict=True)]
        bg = [torch.as_tensor(t.get("bg_weight", 1.0), dtype=torch.float32, device=il.tensor.device) for t in targets]
        with _event_storage():
            features = self.backbone(il.tensor)
            proposals, rpn_losses = self._rpn(il, features, gt)
            box_losses = self._box_losses(features, proposals, gt, bg)
        return {**rpn_losses, **box_losses}

    def _rpn(self, il, features, gt):
        """detectron2's RPN forward and losses, with anchors matched to boxes that may not be regressed
        (``regress`` False or weight 0) left out of ``loss_rpn_loc`` (still objectness positives), as
        :class:`~activedet.models.rpn.MaskedRPN` does; equal to detectron2's losses when every box is regressed."""
        from detectron2.layers import cat
        from detectron2.modeling.box_regression import _dense_box_regression_loss
        from detectron2.structures import Boxes, pairwise_iou

        rpn = self.proposal_generator
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]  # (N, Hi*Wi*A)
        box_dim = rpn.anchor_generator.box_dim
        deltas = [x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2) for x in deltas]
        gt_labels, gt_boxes = rpn.label_and_sample_anchors(anchors, gt)
        all_anchors = Boxes.cat(anchors)
        reg_masks = []
        for inst, labels in zip(gt, gt_labels, strict=True):
            ok = inst.gt_regress & (inst.gt_weights > 0)
            if len(inst) and not bool(ok.all()):
                matched, _ = rpn.anchor_matcher(pairwise_iou(inst.gt_boxes, all_anchors))  # deterministic: the same matches
                reg_masks.append((labels == 1) & ok.to(labels.device)[matched.to(labels.device)])
            else:
                reg_masks.append(labels == 1)
        labels = torch.stack(gt_labels)
        loc = _dense_box_regression_loss(anchors, rpn.box2box_transform, deltas, gt_boxes, torch.stack(reg_masks),
                                         box_reg_loss_type=rpn.box_reg_loss_type, smooth_l1_beta=rpn.smooth_l1_beta)
        valid = labels >= 0
        objectness = F.binary_cross_entropy_with_logits(cat(logits, dim=1)[valid], labels[valid].to(torch.float32), reduction="sum")
        norm = rpn.batch_size_per_image * len(gt)
        losses = {"loss_rpn_cls": objectness / norm, "loss_rpn_loc": loc / norm}
        losses = {k: v * rpn.loss_weight.get(k, 1.0) for k, v in losses.items()}
        proposals = rpn.predict_proposals(anchors, logits, deltas, il.image_sizes)
        return proposals, losses

    def _box_losses(self, features, proposals, gt, bg_weights) -> dict[str, Tensor]:
        """detectron2's box-head losses with per-box weights, regression mask and background weight."""
        from detectron2.layers import cat

        rh = self.roi_heads
        proposals = rh.label_and_sample_proposals(proposals, gt)
        x = rh.box_head(rh.box_pooler([features[f] for f in rh.box_in_features], [p.proposal_boxes for p in proposals]))
        scores, deltas = rh.box_predictor(x)
        c = rh.num_classes
        weights, regress = [], []
        for p, bg in zip(proposals, bg_weights, strict=True):
            fg = p.gt_classes < c
            w = p.gt_weights.float() if p.has("gt_weights") else torch.ones_like(fg, dtype=torch.float32)
            weights.append(torch.where(fg, w, bg))
            regress.append(fg & (p.gt_regress if p.has("gt_regress") else torch.ones_like(fg)))
        w, reg = cat(weights), cat(regress)
        gt_classes = cat([p.gt_classes for p in proposals])
        k = max(gt_classes.numel(), 1)
        loss_cls = (F.cross_entropy(scores.float(), gt_classes, reduction="none") * w).sum() / k
        pred = rh.box_predictor
        prop_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
        d = deltas.float()
        d = d[reg] if d.shape[1] == 4 else d.view(d.shape[0], -1, 4)[reg, gt_classes[reg]]
        target = pred.box2box_transform.get_deltas(prop_boxes[reg], gt_boxes[reg])
        per_box = F.smooth_l1_loss(d, target, beta=pred.smooth_l1_beta, reduction="none").sum(dim=1) if pred.smooth_l1_beta > 0 \
            else F.l1_loss(d, target, reduction="none").sum(dim=1)
        loss_box = (per_box * w[reg]).sum() / k
        lw = pred.loss_weight
        return {"loss_cls": loss_cls * lw.get("loss_cls", 1.0), "loss_box_reg": loss_box * lw.get("loss_box_reg", 1.0)}


def _add_mc_dropout(model: D2RCNN, *, dropout_p: float, train_dropout: bool) -> None:
    from activedet.models.roi_heads import MCDropout

    head = model.roi_heads.box_head
    if not isinstance(head, nn.Sequential):
        raise ConfigError(f"detectron2 config: box head {type(head).__name__} is not a FastRCNNConvFCHead (MC dropout needs one)")
    head.add_module("mc_dropout", MCDropout(dropout_p, train_dropout=train_dropout))


def build_d2(
    *, num_classes: int, zoo_config: str | None = None, config_file: str | None = None, config_yaml: str | None = None,
    overrides: dict[str, Any] | None = None, min_size: int | None = None, max_size: int | None = None,
    frozen_bn: bool | None = None, freeze_at: int | None = None, dropout_p: float = 0.1, train_dropout: bool = False,
) -> D2RCNN:
    """Build a :class:`D2RCNN` for ``num_classes`` (C + 1) from a detectron2 config (see module docstring)."""
    from_scratch = {"frozen_bn": False, "freeze_at": 0}  # activedet's from-scratch defaults (the stage sets pretrained ones)
    frozen_bn = from_scratch["frozen_bn"] if frozen_bn is None and config_yaml is None else frozen_bn
    freeze_at = from_scratch["freeze_at"] if freeze_at is None and config_yaml is None else freeze_at
    cfg = make_config(
        num_classes=num_classes, zoo_config=zoo_config, config_file=config_file, config_yaml=config_yaml,
        overrides=overrides, min_size=min_size, max_size=max_size, frozen_bn=frozen_bn, freeze_at=freeze_at,
    )
    from detectron2.modeling import build_model

    try:
        rcnn = build_model(cfg)
    except Exception as exc:  # detectron2 asserts on inconsistent configs
        raise ConfigError(f"detectron2 config does not build: {_first_line(exc)}") from None
    asked = {"config_file": config_file, "overrides": overrides, "min_size": min_size, "max_size": max_size,
             "frozen_bn": frozen_bn, "freeze_at": freeze_at}
    # what the user asked for (provenance; re-applying it to config_yaml changes nothing) + the resolved config
    recorded = {**{k: v for k, v in asked.items() if v is not None}, "config_yaml": cfg.dump(),
                "dropout_p": dropout_p, "train_dropout": train_dropout}
    model = D2RCNN(rcnn, cfg, recorded_options=recorded)
    _add_mc_dropout(model, dropout_p=dropout_p, train_dropout=train_dropout)
    return model


# --------------------------------------------------------------------------- backend


def _to_activedet(boxes: Tensor, probs: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """detectron2's ``[N, C*4]`` (or class-agnostic ``[N, 4]``) boxes and ``[N, C+1]`` probs with
    background last -> ``[N, C+1, 4]`` and probs with background first."""
    n = boxes.shape[0]
    b = boxes.view(n, -1, 4)
    if b.shape[1] == 1:
        b = b.expand(n, c, 4)
    b = torch.cat([b.new_zeros(n, 1, 4), b], dim=1)
    return b, torch.cat([probs[:, c:], probs[:, :c]], dim=1)


class Detectron2Backend:
    """The detectron2 backend (see module docstring)."""

    name = DETECTRON2
    backbone_prefix = "backbone.bottom_up."
    unsupported: dict[str, str] = {
        "ssl.mode mean_teacher": "the online mean teacher drives torchvision's RPN and RoI heads step by step; use ssl.mode offline",
        "preset_options.box_head certainty": "the certainty head replaces torchvision's box predictor; detectron2 presets have the standard head",
        "acquisition.score localization": "it needs the certainty box head",
        "training.backbone_weights": "give an ImageNet or model-zoo .pkl as training.init_checkpoint instead",
    }

    def build(self, preset: str, *, num_classes: int, **options: Any) -> nn.Module:
        from activedet.models.presets import build_model

        return build_model(preset, num_classes=num_classes, **options)

    def input_size(self, model: nn.Module) -> dict[str, Any]:
        return {"min_size": [model.min_size], "max_size": model.max_size}

    def import_state(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A foreign state dict onto detectron2 keys: as is when its keys are detectron2's, else
        detectron2's own name-matching heuristics (Caffe2 names converted), as its checkpointer does."""
        own = model.state_dict()
        if sum(k in own for k in state) >= 0.5 * len(state):
            return state
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

        c2 = not any("." in k for k in state)
        try:
            return dict(align_and_update_state_dicts(own, dict(state), c2_conversion=c2))
        except Exception as exc:  # its heuristics assert on ambiguous names
            log.warning("detectron2 name matching failed (%s); loading keys as they are", _first_line(exc))
            return state

    @torch.inference_mode()
    def predict(self, model, images, *, score_floor, nms_iou, max_dets, pre_nms=False, embeddings=False, mc_samples=0):
        from detectron2.structures import Boxes

        from activedet.models.roi_heads import mc_dropout, postprocess_detections

        il, scales = model.preprocess(images)
        features = model.backbone(il.tensor)
        proposals, _ = model.proposal_generator(il, features, None)
        rh = model.roi_heads
        feats = [features[f] for f in rh.box_in_features]
        preds = rh.box_predictor(rh.box_head(rh.box_pooler(feats, [p.proposal_boxes for p in proposals])))
        boxes = rh.box_predictor.predict_boxes(preds, proposals)
        probs = rh.box_predictor.predict_probs(preds, proposals)
        c = rh.num_classes
        results = []
        for b, p, size in zip(boxes, probs, il.image_sizes, strict=True):
            b, p = _to_activedet(b.float(), p.float(), c)
            results.append(postprocess_detections(
                b, p, tuple(size), score_thresh=score_floor, nms_thresh=nms_iou, detections_per_img=max_dets, keep_pre_nms=pre_nms,
            ))
        passes, counts = None, None  # without MC dropout
        if mc_samples:
            kept = [Boxes(r["boxes"]) for r in results]
            counts = [len(r["boxes"]) for r in results]
            passes = []
            with mc_dropout(rh.box_head):
                for _ in range(mc_samples):
                    logits, _ = rh.box_predictor(rh.box_head(rh.box_pooler(feats, kept)))
                    sm = F.softmax(logits.float(), dim=-1)
                    passes.append(torch.cat([sm[:, c:], sm[:, :c]], dim=1))
        return finish_results(results, [(1.0 / sx, 1.0 / sy) for sx, sy in scales],
                              mc_passes=passes, counts=counts,
                              embeddings=pooled_embedding(features, ("p6",)) if embeddings else None)
