"""Detectors with their provenance, and checkpoints that never unpickle.

A checkpoint is a folder (local or ``s3://``) holding::

    model.safetensors   the model's state dict (tensors only)
    meta.json           preset + options, class names and category ids, input size, box head
                        (``box_head``: type and intervals K), training config, data digest,
                        metrics, package version, parent run ids
    _MANIFEST.json      the commit (sizes, sha256): a folder without one is never loaded

Both files are checked against the manifest's sha256 before they are parsed.

:func:`load_detector` rebuilds the preset from ``meta.json`` and loads the tensors with
safetensors; nothing is unpickled. Given a dataset, a checkpoint whose classes differ from the
dataset's is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from activedet import __version__, store
from activedet.errors import ActivedetError, IncompleteOutputError, StoreError
from activedet.models.certainty_head import head_spec

WEIGHTS = "model.safetensors"
META = "meta.json"
FORMAT = "activedet-detector/1"


class CheckpointError(ActivedetError):
    """A checkpoint is missing, malformed or does not fit the dataset."""


@dataclass
class Detector:
    """A model plus what it predicts: category ids (ascending) and names, preset and options.

    ``model`` follows torchvision's label convention: label ``k`` (1..C) is ``category_ids[k-1]``
    and ``class_probs`` index 0 is background. ``meta`` carries provenance (training config, data
    digest, metrics, parents) into the next checkpoint.
    """

    model: torch.nn.Module
    preset: str
    category_ids: list[int]
    class_names: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Foreground classes C (the model has C + 1 outputs)."""
        return len(self.category_ids)

    def labels_to_categories(self, labels) -> np.ndarray:
        """Model labels (1..C) -> dataset category ids."""
        lut = np.asarray([-1, *self.category_ids], dtype=np.int64)
        return lut[np.asarray(labels, dtype=np.int64)]

    def category_to_label(self) -> dict[int, int]:
        """Dataset category id -> model label (1..C)."""
        return {c: i + 1 for i, c in enumerate(self.category_ids)}

    @property
    def backend(self):
        """The :class:`~activedet.models.backend.Backend` that runs this detector's preset."""
        from activedet.models.backend import backend_for

        return backend_for(self.preset)

    def input_size(self) -> dict[str, Any]:
        return self.backend.input_size(self.model)

    def to(self, device) -> Detector:
        self.model.to(device)
        return self


def build_detector(preset: str, *, category_ids, class_names, **options: Any) -> Detector:
    """A randomly initialised detector of ``preset`` for the given classes."""
    category_ids = [int(c) for c in category_ids]
    if category_ids != sorted(category_ids) or len(set(category_ids)) != len(category_ids):
        raise CheckpointError(f"category ids must be unique and ascending, got {category_ids}")
    from activedet.models.backend import backend_for

    backend = backend_for(preset)
    model = backend.build(preset, num_classes=len(category_ids) + 1, **options)
    recorded = getattr(model, "recorded_options", None)  # what rebuilds it elsewhere (detectron2: the resolved config)
    return Detector(model, preset, category_ids, list(class_names), dict(recorded if recorded is not None else options))


def detector_for_dataset(preset: str, dataset, **options: Any) -> Detector:
    """A fresh detector with the classes of ``dataset`` (an :class:`activedet.data.dataset.Dataset`)."""
    return build_detector(preset, category_ids=dataset.category_ids, class_names=dataset.class_names, **options)


def checkpoint_meta(detector: Detector, **extra: Any) -> dict[str, Any]:
    """The ``meta.json`` content for ``detector`` (``extra`` overrides/extends its meta)."""
    meta = dict(detector.meta)
    meta.update(extra)
    meta.update(
        format=FORMAT,
        preset=detector.preset,
        options=detector.options,
        category_ids=detector.category_ids,
        class_names=detector.class_names,
        input_size=detector.input_size(),
        backend=detector.backend.name,
        box_head=head_spec(detector.model),
        package_version=__version__,
    )
    return meta


def meta_head(meta: dict) -> dict[str, Any]:
    """The box head a checkpoint's meta records (older checkpoints: from its preset options)."""
    if isinstance(meta.get("box_head"), dict):
        return {k: meta["box_head"][k] for k in ("type", "intervals") if k in meta["box_head"]}
    options = meta.get("options") or {}
    if options.get("box_head", "standard") == "standard":
        return {"type": "standard"}
    return {"type": options["box_head"], "intervals": options.get("intervals", 30)}


def check_head(meta: dict, detector: Detector, *, where: str) -> None:
    """Refuse a checkpoint whose box head (type, intervals K) differs from ``detector``'s."""
    def describe(h: dict) -> str:
        return h["type"] + (f" (intervals={h['intervals']})" if "intervals" in h else "")

    theirs = meta_head(meta)
    ours = {k: v for k, v in head_spec(detector.model).items() if k in ("type", "intervals")}
    if theirs != ours:
        raise CheckpointError(
            f"checkpoint {where} has box head {describe(theirs)}, but the detector has {describe(ours)}: "
            "set preset_options box_head/intervals to match, or train from scratch"
        )


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint_files(detector: Detector, folder: str | Path, **meta: Any) -> dict[str, Path]:
    """Write ``model.safetensors`` and ``meta.json`` into a local folder; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = checkpoint_meta(detector, **meta)
    save_file(_state_tensors(detector.model), str(folder / WEIGHTS), metadata={"format": FORMAT, "preset": detector.preset})
    (folder / META).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    return {WEIGHTS: folder / WEIGHTS, META: folder / META}


def write_checkpoint(out: store.OutputWriter, detector: Detector, *, subdir: str = "", **meta: Any) -> str:
    """Write a checkpoint into an open :class:`~activedet.store.OutputWriter`; returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        files = save_checkpoint_files(detector, tmp, **meta)
        for name, path in files.items():
            out.add_file(store.join(subdir, name) if subdir else name, path)
    return out.uri(subdir) if subdir else out.prefix


def upload_checkpoint(detector: Detector, uri: str, *, extra_files: dict[str, Path] | None = None, **meta: Any) -> str:
    """Write a committed checkpoint folder straight to ``uri`` (used for resume state).

    ``extra_files`` (name -> local path, e.g. optimizer state) travel with it. The folder's
    ``_MANIFEST.json`` (sizes, sha256) is written last: readers accept the folder only then.
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = {**save_checkpoint_files(detector, tmp, **meta), **(extra_files or {})}
        listed = {}
        for name, path in files.items():
            store.upload(path, store.join(uri, name))
            listed[name] = {"size": Path(path).stat().st_size, "sha256": store.sha256_file(Path(path))}
    store.write_json(store.join(uri, store.MANIFEST), {"format": store.MANIFEST_FORMAT, "files": listed})
    return uri


def _checkpoint_folder(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri.rsplit("/", 1)[0] if uri.endswith(".safetensors") or uri.endswith(META) else uri


def committed_checkpoint(uri: str) -> tuple[str, dict, str]:
    """(committed prefix, its manifest, checkpoint subfolder in it) of the checkpoint at ``uri``.

    A checkpoint is readable only as part of a committed output: its folder's manifest, or the
    manifest of the output it was written into (``write_checkpoint(..., subdir=...)``).
    """
    folder = _checkpoint_folder(uri)
    parent, _, leaf = folder.rpartition("/")
    for prefix, sub in ((folder, ""), (parent, leaf)):
        if not prefix or not store.is_committed(prefix):
            continue
        try:
            manifest = store.require_committed(prefix)
        except IncompleteOutputError as exc:
            raise CheckpointError(f"checkpoint {folder}: {exc}") from None
        if store.join(sub, META).lstrip("/") in manifest["files"]:
            return prefix, manifest, sub
    if store.exists(store.join(folder, META)) or store.exists(store.join(folder, WEIGHTS)):
        raise CheckpointError(
            f"checkpoint {folder} has no {store.MANIFEST}: an unfinished write or not an activedet checkpoint (re-run the stage that wrote it)"
        )
    raise CheckpointError(f"not a checkpoint: {store.join(folder, META)} not found")


def read_checkpoint_meta(uri: str) -> dict[str, Any]:
    """``meta.json`` of the checkpoint at ``uri`` (a folder, or its ``model.safetensors``); sha256-checked."""
    prefix, manifest, sub = committed_checkpoint(uri)
    meta_uri = store.join(prefix, sub, META)
    try:
        meta = store.read_output_json(prefix, store.join(sub, META).lstrip("/"), manifest=manifest)
    except StoreError as exc:
        raise CheckpointError(f"checkpoint meta {meta_uri}: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"malformed checkpoint meta {meta_uri}: expected a JSON object")
    missing = [k for k in ("preset", "category_ids", "class_names") if k not in meta]
    if missing:
        raise CheckpointError(f"malformed checkpoint meta {meta_uri}: missing {missing}")
    return meta


def read_state(uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (safetensors only: no pickle is ever loaded); sha256-checked."""
    prefix, manifest, sub = committed_checkpoint(uri)
    return read_safetensors(prefix, store.join(sub, WEIGHTS).lstrip("/"), manifest=manifest)


def read_safetensors(prefix: str, name: str, *, manifest: dict | None = None) -> dict[str, torch.Tensor]:
    """Tensors of committed file ``name`` under ``prefix``, after its sha256 matched the manifest."""
    where = store.join(prefix, name)
    try:
        with store.verified_local_file(prefix, name, manifest) as path:
            return load_file(str(path))
    except StoreError as exc:
        raise CheckpointError(f"checkpoint {where}: {exc}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def check_classes(meta: dict, dataset, *, where: str) -> None:
    """Refuse a checkpoint whose category ids/names differ from ``dataset``'s."""
    if dataset is None:
        return
    ours = (list(meta["category_ids"]), list(meta["class_names"]))
    theirs = (dataset.category_ids, dataset.class_names)
    if ours != theirs:
        raise CheckpointError(
            f"checkpoint {where} was trained on classes {dict(zip(*ours, strict=False))} but dataset "
            f"{dataset.uri} has {dict(zip(*theirs, strict=False))}"
        )


def load_detector(checkpoint_uri: str, *, dataset=None, device: str | torch.device = "cpu") -> Detector:
    """Rebuild a detector from a checkpoint folder (local or S3) and load its weights."""
    meta = read_checkpoint_meta(checkpoint_uri)
    check_classes(meta, dataset, where=checkpoint_uri)
    det = build_detector(
        meta["preset"], category_ids=meta["category_ids"], class_names=meta["class_names"], **meta.get("options", {})
    )
    _load_state(det, read_state(checkpoint_uri), checkpoint_uri)
    det.meta = {k: v for k, v in meta.items() if k not in ("preset", "options", "category_ids", "class_names")}
    return det.to(device)


def load_weights(detector: Detector, checkpoint_uri: str) -> dict[str, Any]:
    """Warm-start ``detector`` from a checkpoint with the same preset and classes; returns its meta."""
    meta = read_checkpoint_meta(checkpoint_uri)
    if (meta["category_ids"], meta["class_names"]) != (detector.category_ids, detector.class_names):
        raise CheckpointError(
            f"checkpoint {checkpoint_uri} has classes {meta['class_names']}, expected {detector.class_names}"
        )
    if meta["preset"] != detector.preset:
        raise CheckpointError(f"checkpoint {checkpoint_uri} is preset {meta['preset']!r}, expected {detector.preset!r}")
    check_head(meta, detector, where=checkpoint_uri)
    _load_state(detector, read_state(checkpoint_uri), checkpoint_uri)
    return meta


def _load_state(detector: Detector, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        detector.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {where} does not fit preset {detector.preset!r}: {first}") from None
