"""A restricted unpickler for foreign checkpoints (detectron2 model-zoo / Caffe2 ``.pkl`` files).

Plain pickles can run any code at load time. :func:`load_restricted` admits only what a weights
file needs: numpy arrays (and their dtypes and scalars) inside plain containers (dict, list,
tuple, ``OrderedDict``) of str / numbers / bools / None. Any other global -- ``os.system``, a
class of some library -- is refused before it is called, with a one-line
:class:`~activedet.models.weights.WeightsError`. Torch's own ``.pth`` files are read with
``torch.load(weights_only=True)`` instead (torch's restricted loader; see
:mod:`activedet.models.weights`).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: the only globals a restricted pickle may name (module, name)
ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 2 pickles (latin1) encode array bytes through it
})


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedPickleError(f"refused to unpickle {module}.{name} (only numpy arrays and plain containers are admitted)")


def load_restricted(data: bytes) -> Any:
    """Unpickle ``data`` admitting only :data:`ALLOWED_GLOBALS` (``latin1`` for Python 2 pickles)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def state_from_pickle(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a detectron2 / Caffe2 ``.pkl`` weights file (``{"model": ...}`` or ``{"blobs": ...}``
    or a bare dict of arrays); entries that are not arrays and Caffe2 ``*_momentum`` blobs are dropped.
    Raises :class:`RefusedPickleError` or :class:`ValueError` (the caller words the one-line error)."""
    obj = load_restricted(Path(path).read_bytes())
    if isinstance(obj, dict):
        for key in ("model", "blobs"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError("not a dict of arrays")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray) and not str(k).endswith("_momentum"):
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, torch.Tensor):
            out[str(k)] = v
    if not out:
        raise ValueError("no arrays in it")
    return out
