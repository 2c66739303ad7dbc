"""Checks every dataset import runs before anything is written (issue 11).

* **Annotation files** must be UTF-8 JSON / text (:func:`read_json`, :func:`read_text`): another
  encoding or binary data is a one-line error naming the file and the first bad byte.
* **Integer fields** (ids, sizes, frame indexes) are JSON integers that fit the tables' int32
  columns (:func:`as_int`): booleans, fractions, strings and values >= 2^31 are errors.
* **File names** resolve inside the images root (:func:`resolve_file`): ``..`` escapes and
  absolute paths or URIs outside the root are errors; an absolute path inside the root is stored
  exactly as it was checked.
* **Image files** are probed in parallel threads (:func:`probe_images`): each one's header is
  opened with Pillow (no pixel decoding) to get its real size, and its last bytes are checked for
  the format's end marker (JPEG ``EOI``, PNG ``IEND``) or declared length (WebP, BMP), so 0-byte,
  non-image, unreadable and truncated files are found at import, not in the middle of training.
  Corrupt pixel data inside a complete file is not detected: that needs a full decode.

Local files and ``s3://`` objects alike: S3 sizes come from one listing, headers and tails from
ranged GETs through the store's client (bounded timeouts, see :func:`activedet.store.s3_settings`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import stat
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from activedet import store
from activedet.errors import ActivedetError
from activedet.progress import Progress

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
HEAD_BYTES = 64 * 1024  # enough for the header of nearly every JPEG/PNG; more is read only if needed
TAIL_BYTES = 256
DEFAULT_WORKERS = 16
MISSING = "missing"
PROGRESS_MIN = 5000  # images; fewer are probed in a few seconds
_BATCH = 256  # at most this many images per thread-pool task


class DatasetImportError(ActivedetError):
    """An annotation file or its images cannot be imported as they are."""


# --------------------------------------------------------------------------- text and JSON


def _decode(data: bytes, where: str, error: type[ActivedetError]) -> str:
    try:
        return data.decode("utf-8-sig")  # a UTF-8 BOM (Windows tools) is fine
    except UnicodeDecodeError as exc:
        raise error(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def read_text(uri: str | Path, *, error: type[ActivedetError] = DatasetImportError) -> str:
    """A UTF-8 text file (local path or URI); any other encoding is a one-line ``error``."""
    return _decode(store.read_bytes(str(uri)), str(uri), error)


def read_json(uri: str | Path, *, error: type[ActivedetError] = DatasetImportError):
    """Parse a UTF-8 JSON file; bad encoding or syntax is a one-line ``error`` naming the file."""
    text = read_text(uri, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{uri}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{uri}: JSON nested too deeply") from None


# --------------------------------------------------------------------------- field values


def is_number(value) -> bool:
    """A JSON number (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_int(value, where: str, *, lo: int = 0, hi: int = INT32_MAX, error: type[ActivedetError] = DatasetImportError) -> int:
    """``value`` as an int in ``[lo, hi]``: an integer (or an integral float such as ``640.0``).

    Booleans, strings, fractions and out-of-range values raise ``error`` naming ``where``.
    """
    ok = is_number(value) and math.isfinite(value) and float(value).is_integer()
    if ok and lo <= int(value) <= hi:
        return int(value)
    need = "an integer" if not ok else f"in [{lo}, {hi}]"
    raise error(f"{where} must be {need}, got {value!r}")


def as_flag(value, where: str, *, error: type[ActivedetError] = DatasetImportError) -> bool:
    """A COCO flag such as ``iscrowd``: 0, 1, true or false (missing means 0)."""
    if value is None:
        return False
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise error(f"{where} must be 0, 1, true or false, got {value!r}")


def as_bbox(value, where: str, *, error: type[ActivedetError] = DatasetImportError) -> tuple[float, float, float, float]:
    """A COCO ``bbox`` ``[x, y, w, h]`` of four finite numbers with ``w, h >= 0``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(is_number(v) for v in value)):
        raise error(f"{where}: bbox must be [x, y, w, h] (four numbers), got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise error(f"{where}: bbox has a non-finite value: {value!r}")
    if w < 0 or h < 0:
        raise error(f"{where}: bbox has a negative width or height: {value!r}")
    return x, y, w, h


# --------------------------------------------------------------------------- file names


def _outside(name: str, root: str, error: type[ActivedetError], where: str) -> ActivedetError:
    return error(f"{where}: file_name {name!r} is outside the images root {root}")


def resolve_file(root: str, name, where: str, *, also_root: str | None = None,
                 error: type[ActivedetError] = DatasetImportError) -> str:
    """The URI of ``name`` under ``root`` (an absolute local path or an ``s3://`` prefix).

    ``name`` is relative to ``root``, or an absolute path / URI inside it (``also_root`` is a second
    spelling of a local root, e.g. before symlinks were resolved). The result is normalised
    (``a/./b`` -> ``a/b``); anything that leaves the root raises ``error`` naming ``where``.
    """
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise error(f"{where}: file_name must be a non-empty string, got {name!r}")
    if store.is_s3(root):
        prefix = root.rstrip("/") + "/"
        if name.startswith(prefix):
            name = name[len(prefix):]
        elif "://" in name or name.startswith("/"):
            raise _outside(name, root, error, where)
        rel = posixpath.normpath(name)
        if rel in (".", "..") or rel.startswith("../"):
            raise _outside(name, root, error, where)
        return store.join(root, rel)
    if "://" in name:
        raise _outside(name, root, error, where)
    full = os.path.normpath(name if os.path.isabs(name) else os.path.join(root, name))
    for base in filter(None, (root, also_root)):
        base = os.path.normpath(base)
        if full.startswith(base.rstrip(os.sep) + os.sep):
            return full
    raise _outside(name, root, error, where)


# --------------------------------------------------------------------------- image probes


@dataclass(frozen=True)
class ImageProbe:
    """What an image file's header says: its size, or why it cannot be used (``problem``)."""

    uri: str
    size: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def missing(self) -> bool:
        return self.problem == MISSING


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its fixed CRC


def _truncation(fmt: str | None, head: bytes, tail: bytes, size: int, scan_offset: int, read_all) -> str | None:
    """Why a file whose header parsed is nonetheless cut short (None when it looks complete).

    The end marker is looked for in the last bytes; only when it is not there is the whole file
    read, since data after the marker is allowed (phones append a video to "motion photos").
    JPEG entropy-coded data cannot hold ``FF D9``, so one found after the scan start ends the image.
    """
    if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
        data = head if len(head) >= size else read_all()
        if data.find(b"\xff\xd9", scan_offset) < 0:
            return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and PNG_END not in tail:
        data = head if len(head) >= size else read_all()
        if data.find(PNG_END) < 0:
            return "truncated PNG (no IEND chunk)"
    if fmt == "WEBP" and len(head) >= 8 and size < int.from_bytes(head[4:8], "little") + 8:
        return "truncated WebP (shorter than its RIFF length)"
    if fmt == "BMP" and len(head) >= 6 and size < int.from_bytes(head[2:6], "little"):
        return "truncated BMP (shorter than its declared size)"
    return None


def _parse(head: bytes, tail: bytes, size: int, read_all) -> tuple[tuple[int, int] | None, str | None]:
    """(size, problem) from the first bytes of a file, reading all of it only when the header is longer."""
    from PIL import Image, UnidentifiedImageError

    errors = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
    for attempt in range(2):
        try:
            with Image.open(io.BytesIO(head)) as im:
                dims, fmt = (int(im.width), int(im.height)), im.format
                scan_offset = int(im.tile[0][2]) if im.tile else 0
            break
        except (UnidentifiedImageError, *errors) as exc:
            if attempt == 0 and len(head) < size:  # a header longer than HEAD_BYTES: read everything
                head = read_all()
                continue
            if isinstance(exc, UnidentifiedImageError):
                return None, "not an image (Pillow cannot identify it)"
            return None, f"unreadable image header ({_first_line(exc)})"
    problem = _truncation(fmt, head, tail, size, scan_offset, read_all)
    return (None, problem) if problem else (dims, None)


def _probe_local(uri: str) -> ImageProbe:
    path = store.local_path(uri)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return ImageProbe(uri, problem=MISSING)
        if st.st_size == 0:
            return ImageProbe(uri, problem="empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            fh.seek(max(0, st.st_size - TAIL_BYTES))
            tail = fh.read()
            dims, problem = _parse(head, tail, st.st_size, lambda: path.read_bytes())
    except FileNotFoundError:
        return ImageProbe(uri, problem=MISSING)
    except OSError as exc:
        return ImageProbe(uri, problem=f"cannot read ({exc.strerror or _first_line(exc)})")
    return ImageProbe(uri, size=dims, problem=problem)


def _s3_range(uri: str, byte_range: str | None) -> bytes:
    parsed = urlparse(uri)
    kwargs = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
    if byte_range:
        kwargs["Range"] = byte_range
    return store.s3_client().get_object(**kwargs)["Body"].read()


def _probe_s3(uri: str, size: int | None) -> ImageProbe:
    from botocore.exceptions import BotoCoreError, ClientError

    if size is None:
        return ImageProbe(uri, problem=MISSING)
    if size == 0:
        return ImageProbe(uri, problem="empty file (0 bytes)")
    try:
        if size <= HEAD_BYTES + TAIL_BYTES:  # small object: one GET
            head = tail = _s3_range(uri, None)
        else:
            head = _s3_range(uri, f"bytes=0-{HEAD_BYTES - 1}")
            tail = _s3_range(uri, f"bytes=-{TAIL_BYTES}")
        dims, problem = _parse(head, tail, size, lambda: _s3_range(uri, None))
    except (BotoCoreError, ClientError) as exc:
        return ImageProbe(uri, problem=f"cannot read ({_first_line(exc)})")
    return ImageProbe(uri, size=dims, problem=problem)


def probe_images(root: str, uris: Sequence[str], *, workers: int = DEFAULT_WORKERS) -> list[ImageProbe]:
    """Probe every image under ``root`` (see the module docstring), ``workers`` threads at once.

    Returns one :class:`ImageProbe` per URI, in order. ``workers=1`` probes serially in the
    calling thread. Threads pay off most on S3 and network file systems, where each probe waits
    on I/O; Pillow's header parsing itself holds the GIL.
    """
    if store.is_s3(root):
        sizes = {o["uri"]: int(o["size"]) for o in store.list_objects(root)}

        def probe(uri: str) -> ImageProbe:
            return _probe_s3(uri, sizes.get(uri))
    else:
        probe = _probe_local
    # batches keep thread-pool overhead small at 100k images, yet give every worker some
    step = max(1, min(_BATCH, math.ceil(len(uris) / (4 * max(1, workers)))))
    batches = [list(uris[i:i + step]) for i in range(0, len(uris), step)]
    def run(batch: list[str]) -> list[ImageProbe]:
        return [probe(u) for u in batch]

    out: list[ImageProbe] = []
    with ExitStack() as stack:
        # a few seconds of work needs no progress lines (and a bad small import stays one stderr line)
        bar = stack.enter_context(Progress(len(uris), "image headers", unit="img")) if len(uris) >= PROGRESS_MIN else None
        if workers <= 1:
            results = map(run, batches)
        else:
            results = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")).map(run, batches)
        for done in results:
            out += done
            if bar is not None:
                bar.update(len(done))
    return out


def first_offenders(items: Sequence[tuple[str, str]], limit: int = 3) -> str:
    """``'a.jpg' (reason), 'b.png' (reason)`` for the first ``limit`` (name, reason) pairs."""
    return ", ".join(f"{name!r} ({reason})" for name, reason in items[:limit])
