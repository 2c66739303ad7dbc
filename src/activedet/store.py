"""The artifact store: one interface over local paths / ``file://`` and ``s3://``.

Stages exchange everything (tables, checkpoints, reports) through URIs. Local paths and
``file://`` URIs map onto the filesystem; ``s3://bucket/key`` goes through boto3, which reads the
endpoint (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``), region and credentials from the standard
AWS environment and profile, so MinIO and any S3-compatible service work unchanged.

Atomic outputs: a stage writes its files under an output prefix with :class:`OutputWriter` and
commits by writing ``_MANIFEST.json`` (file sizes and sha256) *last*. Readers call
:func:`require_committed` (or :func:`read_table` with ``committed=True``) and get
:class:`~activedet.errors.IncompleteOutputError` for a prefix without a manifest. Re-opening a
writer on an existing prefix removes what was there (except resumable state under ``_resume/``
when asked), so a killed stage can simply be re-run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from activedet.errors import IncompleteOutputError, StoreError

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
RESUME_DIR = "_resume"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


def join(base: str, *parts: str) -> str:
    """Join URI/path parts with ``/`` (works for local paths and ``s3://`` alike)."""
    out = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (plain path or ``file://``)."""
    uri = str(uri)
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    if "://" in uri:
        raise StoreError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return Path(uri)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StoreError(f"bad S3 URI {uri!r}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


# --------------------------------------------------------------------------- S3 client

_client_lock = threading.Lock()
_clients: dict[int, object] = {}


def s3_client():
    """A boto3 S3 client configured from the standard AWS environment, with retries/backoff."""
    import boto3
    from botocore.config import Config

    key = os.getpid()  # clients are not fork-safe: one per process
    with _client_lock:
        if key not in _clients:
            cfg = Config(
                retries={"max_attempts": int(os.environ.get("ACTIVEDET_S3_MAX_ATTEMPTS", "8")), "mode": "adaptive"},
                max_pool_connections=32,
                s3={"addressing_style": os.environ.get("ACTIVEDET_S3_ADDRESSING", "auto")},
            )
            _clients[key] = boto3.session.Session().client("s3", config=cfg)
        return _clients[key]


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK, max_concurrency=8
    )


def _s3_error(exc: Exception, uri: str) -> StoreError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    if code in ("404", "NoSuchKey", "NotFound"):
        return StoreError(f"object not found: {uri}")
    if code in ("NoSuchBucket",):
        return StoreError(f"bucket does not exist: {uri}")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StoreError(f"access denied to {uri} ({code}); check AWS credentials / profile")
    return StoreError(f"S3 error on {uri}: {code}: {exc}")


# --------------------------------------------------------------------------- basic operations


def exists(uri: str) -> bool:
    """Whether an object (S3) or file/directory (local) exists at ``uri``."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as exc:  # botocore ClientError: 404 means absent, anything else is an error
            err = _s3_error(exc, uri)
            if "not found" in str(err):
                return False
            raise err from exc
    return local_path(uri).exists()


def read_bytes(uri: str) -> bytes:
    """Read a whole object. For large objects prefer :func:`open_read` or :func:`download`."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise _s3_error(exc, uri) from exc
    path = local_path(uri)
    if not path.is_file():
        raise StoreError(f"file not found: {uri}")
    return path.read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write an object; local writes go through a temp file and an atomic rename."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config())
        except Exception as exc:
            raise _s3_error(exc, uri) from exc
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str):
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise StoreError(f"malformed JSON in {uri}: {exc}") from None


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def open_read(uri: str, chunk_size: int = 1 << 20) -> Iterator[io.RawIOBase]:
    """Open an object as a binary stream (bounded memory: S3 bodies are streamed)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            raise _s3_error(exc, uri) from exc
        try:
            yield body
        finally:
            body.close()
        return
    path = local_path(uri)
    if not path.is_file():
        raise StoreError(f"file not found: {uri}")
    with open(path, "rb", buffering=chunk_size) as fh:
        yield fh


def upload(local: str | Path, uri: str) -> None:
    """Copy a local file to ``uri`` (multipart above 64 MiB on S3)."""
    local = Path(local)
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().upload_file(str(local), bucket, key, Config=_transfer_config())
        except Exception as exc:
            raise _s3_error(exc, uri) from exc
        return
    dest = local_path(uri)
    if dest.resolve() == local.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(local, tmp)
    os.replace(tmp, dest)


def download(uri: str, local: str | Path) -> Path:
    """Copy ``uri`` to a local file (multipart/ranged on S3, via a temp file then rename)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().download_file(bucket, key, str(tmp), Config=_transfer_config())
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise _s3_error(exc, uri) from exc
    else:
        src = local_path(uri)
        if not src.is_file():
            raise StoreError(f"file not found: {uri}")
        shutil.copyfile(src, tmp)
    os.replace(tmp, local)
    return local


def list_uris(prefix: str) -> list[str]:
    """All object URIs under ``prefix`` (recursive), sorted."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out: list[str] = []
        try:
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
        except Exception as exc:
            raise _s3_error(exc, prefix) from exc
        return sorted(out)
    root = local_path(prefix)
    if not root.is_dir():
        return []
    base = str(prefix).rstrip("/")
    return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file())


def list_objects(prefix: str) -> list[dict]:
    """Objects under ``prefix`` with ``uri``, ``size`` and ``etag`` (local: mtime-based tag)."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []
        try:
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for o in page.get("Contents", []):
                    out.append({"uri": f"s3://{bucket}/{o['Key']}", "size": o["Size"], "etag": o["ETag"].strip('"')})
        except Exception as exc:
            raise _s3_error(exc, prefix) from exc
        return sorted(out, key=lambda o: o["uri"])
    out = []
    for uri in list_uris(prefix):
        st = local_path(uri).stat()
        out.append({"uri": uri, "size": st.st_size, "etag": f"{st.st_size:x}-{int(st.st_mtime_ns):x}"})
    return out


def delete_prefix(prefix: str, keep: Iterable[str] = ()) -> None:
    """Delete everything under ``prefix`` except keys under the relative prefixes in ``keep``."""
    keep = tuple(k.strip("/") + "/" for k in keep)
    base = str(prefix).rstrip("/") + "/"

    def kept(uri: str) -> bool:
        return any(uri[len(base):].startswith(k) for k in keep)

    if is_s3(prefix):
        bucket, _ = _split_s3(prefix)
        keys = [u for u in list_uris(prefix) if not kept(u)]
        client = s3_client()
        for i in range(0, len(keys), 1000):
            batch = [{"Key": _split_s3(u)[1]} for u in keys[i : i + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        return
    root = local_path(prefix)
    if not root.exists():
        return
    if not keep:
        shutil.rmtree(root)
        return
    for child in root.iterdir():
        if child.name + "/" in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


# --------------------------------------------------------------------------- tables


def write_table(table: pa.Table, uri: str, *, compression: str = "zstd") -> None:
    """Write a Parquet table (local: temp file + rename; S3: upload of a finished file)."""
    if is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "table.parquet"
            pq.write_table(table, path, compression=compression)
            upload(path, uri)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression=compression)
    os.replace(tmp, path)


def read_table(uri: str, *, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet table (S3 objects are downloaded to a temp file, never held twice)."""
    try:
        if is_s3(uri):
            with tempfile.TemporaryDirectory() as tmp:
                path = download(uri, Path(tmp) / "table.parquet")
                return pq.read_table(path, columns=columns, memory_map=False)
        path = local_path(uri)
        if not path.is_file():
            raise StoreError(f"table not found: {uri}")
        return pq.read_table(path, columns=columns, memory_map=True)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"cannot read Parquet table {uri}: {exc}") from None


# --------------------------------------------------------------------------- atomic outputs


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_committed(prefix: str) -> bool:
    """Whether ``prefix`` holds a committed output (its manifest exists)."""
    return exists(join(prefix, MANIFEST))


def require_committed(prefix: str) -> dict:
    """Return the manifest of a committed output, or raise :class:`IncompleteOutputError`."""
    uri = join(prefix, MANIFEST)
    if not exists(uri):
        if list_uris(prefix):
            raise IncompleteOutputError(
                f"incomplete output (no manifest: the writer died or is still running; re-run it) at {prefix}"
            )
        raise IncompleteOutputError(f"no output at {prefix} (nothing there: check the path or URI)")
    return read_json(uri)


class OutputWriter:
    """Writes a stage's output prefix and commits it atomically.

    Usage::

        with OutputWriter(out_uri) as out:
            out.write_table("boxes.parquet", table)
            out.write_json("metrics.json", metrics)
        # the manifest is written here, last; an exception leaves the output uncommitted

    Opening a writer invalidates and clears a previous output at the same prefix (keeping
    ``_resume/`` when ``resumable=True``, so training can pick up its last checkpoint).
    """

    def __init__(self, prefix: str, *, resumable: bool = False, meta: dict | None = None):
        self.prefix = str(prefix).rstrip("/")
        self.resumable = resumable
        self.meta = dict(meta or {})
        self._files: dict[str, dict] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="activedet-out-"))
        self._open = False

    # -- lifecycle
    def __enter__(self) -> OutputWriter:
        manifest = join(self.prefix, MANIFEST)
        if exists(manifest):
            self._remove(manifest)  # invalidate first: a crash below must not leave a stale commit
        delete_prefix(self.prefix, keep=(RESUME_DIR,) if self.resumable else ())
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._open = False

    @staticmethod
    def _remove(uri: str) -> None:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            s3_client().delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    # -- writing
    def uri(self, name: str) -> str:
        return join(self.prefix, name)

    def local_file(self, name: str) -> Path:
        """A scratch path to write ``name`` to before :meth:`add_file` (for libraries that need a path)."""
        path = self._tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_file(self, name: str, local: str | Path) -> str:
        """Upload a finished local file as ``name`` and record it for the manifest."""
        if not self._open:
            raise StoreError(f"output writer for {self.prefix} is not open (use it as a context manager)")
        local = Path(local)
        self._files[name] = {"size": local.stat().st_size, "sha256": _sha256_file(local)}
        upload(local, self.uri(name))
        return self.uri(name)

    def write_bytes(self, name: str, data: bytes) -> str:
        path = self.local_file(name)
        path.write_bytes(data)
        return self.add_file(name, path)

    def write_json(self, name: str, obj) -> str:
        return self.write_bytes(name, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def write_table(self, name: str, table: pa.Table) -> str:
        path = self.local_file(name)
        pq.write_table(table, path, compression="zstd")
        return self.add_file(name, path)

    def commit(self) -> None:
        """Write the manifest last; after this the output is visible to readers."""
        if self.resumable:
            delete_prefix(join(self.prefix, RESUME_DIR))
        manifest = {"files": self._files, "committed_at": time.time(), **self.meta}
        write_json(join(self.prefix, MANIFEST), manifest)


def read_output_table(prefix: str, name: str, **kwargs) -> pa.Table:
    """Read table ``name`` from a committed output (raises on an incomplete one)."""
    require_committed(prefix)
    return read_table(join(prefix, name), **kwargs)


def read_output_json(prefix: str, name: str):
    require_committed(prefix)
    return read_json(join(prefix, name))


# --------------------------------------------------------------------------- content cache


@dataclass
class ContentCache:
    """A local cache of remote objects (training images) with concurrent prefetch.

    Local URIs are returned as-is; ``s3://`` objects are downloaded once into ``root`` under a
    name derived from the URI and reused by every later call (and by data-loader workers).
    """

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @classmethod
    def default(cls) -> ContentCache:
        return cls(Path(os.environ.get("ACTIVEDET_CACHE_DIR", Path.home() / ".cache" / "activedet")))

    def path_for(self, uri: str) -> Path:
        if not is_s3(uri):
            return local_path(uri)
        digest = hashlib.sha256(uri.encode()).hexdigest()
        suffix = Path(urlparse(uri).path).suffix
        return self.root / digest[:2] / f"{digest}{suffix}"

    def fetch(self, uri: str) -> Path:
        path = self.path_for(uri)
        if not path.exists():
            download(uri, path)
        return path

    def prefetch(self, uris: Iterable[str], *, workers: int = 16) -> int:
        """Download every missing object concurrently; returns how many were fetched."""
        missing = [u for u in dict.fromkeys(uris) if is_s3(u) and not self.path_for(u).exists()]
        if not missing:
            return 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(self.fetch, missing))
        return len(missing)
