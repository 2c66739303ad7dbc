"""The artifact store: one interface over local paths / ``file://`` and ``s3://``.

Stages exchange everything (tables, checkpoints, reports) through URIs. Local paths and
``file://`` URIs map onto the filesystem; ``s3://bucket/key`` goes through boto3, which reads the
endpoint (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``), region and credentials from the standard
AWS environment and profile, so MinIO and any S3-compatible service work unchanged.

Safe outputs: a stage writes its files with :class:`OutputWriter`, which refuses any location
holding data activedet did not write, stages every file beside the output and swaps the finished
output in with ``_MANIFEST.json`` (file sizes and sha256). A failed or killed write leaves the
previous committed output intact. Readers call :func:`require_committed` (sizes checked),
:func:`read_output_table` / :func:`read_output_json` / :func:`verified_local_file` (sha256
checked) and get :class:`~activedet.errors.IncompleteOutputError` for a prefix without a valid
commit. S3 calls have bounded connect/read timeouts and attempts (:func:`s3_settings`).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
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


#: environment variables bounding every S3 call (documented in docs/data.md, "S3 timeouts")
S3_ENV_DEFAULTS = {
    "ACTIVEDET_S3_CONNECT_TIMEOUT": 5.0,  # seconds to open a connection
    "ACTIVEDET_S3_READ_TIMEOUT": 15.0,  # seconds without a byte from the endpoint
    "ACTIVEDET_S3_MAX_ATTEMPTS": 3,  # attempts per call, first included
}


def s3_settings() -> dict:
    """Timeouts and attempts from the environment; worst case per call ~ attempts x (connect + read)."""
    out = {}
    for name, default in S3_ENV_DEFAULTS.items():
        raw = os.environ.get(name)
        try:
            value = type(default)(raw) if raw is not None else default
        except ValueError:
            raise StoreError(f"environment variable {name}={raw!r} is not a number") from None
        if value <= 0:
            raise StoreError(f"environment variable {name}={raw!r} must be positive")
        out[name] = value
    return out


def s3_client():
    """A boto3 S3 client from the standard AWS environment, with bounded timeouts and retries."""
    import boto3
    from botocore.config import Config

    settings = s3_settings()
    key = (os.getpid(), tuple(settings.values()))  # clients are not fork-safe: one per process
    with _client_lock:
        if key not in _clients:
            cfg = Config(
                connect_timeout=settings["ACTIVEDET_S3_CONNECT_TIMEOUT"],
                read_timeout=settings["ACTIVEDET_S3_READ_TIMEOUT"],
                retries={"max_attempts": int(settings["ACTIVEDET_S3_MAX_ATTEMPTS"]), "mode": "standard"},
                max_pool_connections=32,
                s3={"addressing_style": os.environ.get("ACTIVEDET_S3_ADDRESSING", "auto")},
            )
            _clients[key] = boto3.session.Session().client("s3", config=cfg)
        return _clients[key]


def _endpoint() -> str:
    try:
        return str(s3_client().meta.endpoint_url)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return "the S3 endpoint"


def _transfer_config(threshold: float | None = None):
    """boto3 transfer settings: parts of MULTIPART_CHUNK, 8 at a time, above ``threshold`` bytes
    (default MULTIPART_THRESHOLD)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD if threshold is None else int(min(threshold, 1 << 62)),  # inf: never
        multipart_chunksize=MULTIPART_CHUNK, max_concurrency=8
    )


def _iter_s3(bucket: str, key_prefix: str, where: str) -> Iterator[dict]:
    """Every object (``Key``, ``Size``, ``ETag``) whose key starts with ``key_prefix``, page by page."""
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
            yield from page.get("Contents", [])
    except Exception as exc:
        raise _s3_error(exc, where, "ListObjectsV2") from exc


def _s3_error(exc: Exception, uri: str, operation: str = "") -> StoreError:
    """One actionable :class:`StoreError` for any botocore failure on ``uri``."""
    from botocore import exceptions as bex

    op = f" during {operation}" if operation else ""
    if isinstance(exc, (bex.ConnectTimeoutError, bex.ReadTimeoutError)):
        kind = "connect" if isinstance(exc, bex.ConnectTimeoutError) else "read"
        return StoreError(
            f"S3 endpoint {_endpoint()} did not answer ({kind} timeout){op} on {uri}; check the endpoint, "
            "or raise ACTIVEDET_S3_READ_TIMEOUT / ACTIVEDET_S3_CONNECT_TIMEOUT"
        )
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError)):
        return StoreError(f"cannot reach S3 endpoint {_endpoint()}{op} on {uri}: {exc}")
    if isinstance(exc, bex.NoCredentialsError):
        return StoreError(f"no AWS credentials for {uri}{op}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code") or type(exc).__name__)
    if code in ("404", "NoSuchKey", "NotFound"):
        return StoreError(f"object not found: {uri}")
    if code in ("NoSuchBucket",):
        return StoreError(f"bucket does not exist: {uri}")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return StoreError(f"access denied to {uri} ({code}){op}; check AWS credentials / profile")
    first = str(exc).splitlines()[0] if str(exc) else code
    return StoreError(f"S3 error{op} on {uri}: {code}: {first}")


# --------------------------------------------------------------------------- basic operations


def exists(uri: str) -> bool:
    """Whether an object (S3) or file/directory (local) exists at ``uri``."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as exc:  # botocore ClientError: 404 means absent, anything else is an error
            err = _s3_error(exc, uri, "HeadObject")
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
            raise _s3_error(exc, uri, "GetObject") from exc
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
            raise _s3_error(exc, uri, "PutObject") from exc
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    _readable_mode(Path(tmp))  # mkstemp makes 0600: readers with another UID (other pods) need the usual mode
    os.replace(tmp, path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str):
    try:
        return json.loads(read_bytes(uri))
    except (UnicodeDecodeError, ValueError) as exc:  # also a binary (e.g. pickled) file
        raise StoreError(f"malformed JSON in {uri}: {str(exc).splitlines()[0]}") from None


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
            raise _s3_error(exc, uri, "GetObject") from exc
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
            raise _s3_error(exc, uri, "PutObject") from exc
        return
    dest = local_path(uri)
    if dest.resolve() == local.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(local, tmp)
    os.replace(tmp, dest)


#: bytes per socket read when streaming one GET into a file: reads go straight into one reused
#: buffer of this size (no per-chunk bytes objects), then to the file
DOWNLOAD_CHUNK = 8 * 1024 * 1024
#: objects up to this size are read whole and written with one call (the GET's latency dominates:
#: on the loopback server a GET answered but not read costs ~80 % of a 1 MB download)
SMALL_OBJECT = 2 * 1024 * 1024


def _ranged_min_bytes() -> float:
    """Objects at least this large are downloaded in ranged parts (``ACTIVEDET_S3_RANGED_MIN_MB``).

    Unset: never. Against the loopback server one streamed GET was at least as fast as ranged
    parts for 1, 64 and 512 MB (benchmarks/results/s3_download.md); an endpoint that caps each
    connection (AWS S3: tens of MB/s per stream) is faster with parts: set it there (e.g. 64).
    """
    raw = os.environ.get("ACTIVEDET_S3_RANGED_MIN_MB")
    if raw is None or raw == "":
        return float("inf")
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"environment variable ACTIVEDET_S3_RANGED_MIN_MB={raw!r} is not a number") from None
    if value <= 0:
        raise StoreError(f"environment variable ACTIVEDET_S3_RANGED_MIN_MB={raw!r} must be positive")
    return value * 1024 * 1024


def _body_reader(body):
    """A ``readinto(buffer) -> int`` for a botocore streaming body.

    The http.client response under urllib3 reads the socket straight into the caller's buffer
    (``recv_into``); urllib3's own ``readinto`` reads into a new bytes object and copies it. On
    the loopback server this was 1.2-1.8x faster for 64-512 MB. Bodies of another shape
    (another botocore / urllib3) use the body's own ``read``. Integrity is not lost: the byte
    count is checked here, and activedet's manifests check sizes and sha256 on read."""
    raw = getattr(getattr(body, "_raw_stream", None), "_fp", None)
    if raw is not None and callable(getattr(raw, "readinto", None)):
        return raw.readinto

    def readinto(buffer: memoryview) -> int:
        data = body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    return readinto


def _copy_body(body, fd: int, want: int, buffer: memoryview) -> int:
    """Copy up to ``want`` bytes of ``body`` to ``fd``; returns the bytes copied (fewer: body ended)."""
    readinto, done = _body_reader(body), 0
    while done < want:
        n = readinto(buffer[: min(len(buffer), want - done)])
        if not n:
            break
        os.write(fd, buffer[:n])  # a regular file: os.write writes everything it is given
        done += n
    return done


def _stream_get(bucket: str, key: str, tmp: Path, uri: str) -> None:
    """One GET streamed into ``tmp``; a connection lost mid-body resumes from the bytes already
    written (a ranged GET pinned to the first answer's ETag), up to ACTIVEDET_S3_MAX_ATTEMPTS."""
    from botocore import exceptions as bex
    from urllib3 import exceptions as u3ex

    client = s3_client()
    attempts = int(s3_settings()["ACTIVEDET_S3_MAX_ATTEMPTS"])
    done, size, etag, buffer = 0, None, None, None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for attempt in range(1, attempts + 1):
            extra = {} if etag is None else {"Range": f"bytes={done}-", "IfMatch": etag}
            resp = client.get_object(Bucket=bucket, Key=key, **extra)
            if etag is None:
                size, etag = int(resp["ContentLength"]), resp.get("ETag")
                buffer = memoryview(bytearray(max(1, min(size, SMALL_OBJECT if size <= SMALL_OBJECT else DOWNLOAD_CHUNK))))
            try:
                done += _copy_body(resp["Body"], fd, size - done, buffer)
            except (bex.ReadTimeoutError, bex.ResponseStreamingError, u3ex.ProtocolError, u3ex.ReadTimeoutError,
                    ConnectionError, TimeoutError, http.client.IncompleteRead) as exc:  # the last three: raw reads
                if attempt == attempts or etag is None:
                    raise
                log.warning("download %s: connection lost after %d of %d bytes (%s); resuming", uri, done, size, exc)
                continue
            finally:
                resp["Body"].close()
            if done == size:
                return
            if attempt == attempts:
                raise StoreError(f"S3 download of {uri} ended after {done} of {size} bytes")
            log.warning("download %s: body ended after %d of %d bytes; resuming", uri, done, size)
    finally:
        os.close(fd)


def download(uri: str, local: str | Path) -> Path:
    """Copy ``uri`` to a local file via a temp file then rename.

    S3: one GET read from the socket straight into a reused buffer and written to the file
    (resumed if the connection drops; see :func:`_stream_get`); ranged parts of MULTIPART_CHUNK
    for objects of at least ``ACTIVEDET_S3_RANGED_MIN_MB`` (unset: never; see
    :func:`_ranged_min_bytes`). benchmarks/results/s3_download.md has the measurements.
    """
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        ranged_min = _ranged_min_bytes()
        try:
            if ranged_min != float("inf") and s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"] >= ranged_min:
                s3_client().download_file(bucket, key, str(tmp), Config=_transfer_config(max(ranged_min, MULTIPART_CHUNK)))
            else:
                _stream_get(bucket, key, tmp, uri)
        except StoreError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise _s3_error(exc, uri, "GetObject") from exc
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
        return sorted(f"s3://{bucket}/{o['Key']}" for o in _iter_s3(bucket, key, prefix))
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
        out = [{"uri": f"s3://{bucket}/{o['Key']}", "size": o["Size"], "etag": o["ETag"].strip('"')}
               for o in _iter_s3(bucket, key, prefix)]
        return sorted(out, key=lambda o: o["uri"])
    out = []
    for uri in list_uris(prefix):
        st = local_path(uri).stat()
        out.append({"uri": uri, "size": st.st_size, "etag": f"{st.st_size:x}-{int(st.st_mtime_ns):x}"})
    return out


def delete_prefix(prefix: str, keep: Iterable[str] = ()) -> None:
    """Delete everything under ``prefix`` except keys under the relative prefixes in ``keep``.

    Callers pass only prefixes activedet owns (staging, resume state); a bucket root is refused.
    """
    if is_s3(prefix) and not _split_s3(prefix)[1].strip("/"):
        raise StoreError(f"refusing to delete the bucket root {prefix}")
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
            try:
                client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise _s3_error(exc, prefix, "DeleteObjects") from exc
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

#: JSON marker of an activedet write in progress: in a staging prefix, in a resumable output
#: before its first commit, and (S3) in an output while a commit copies its files in.
WRITING_MARKER = "_WRITING.json"
MANIFEST_FORMAT = "activedet-output/1"
_OURS = (MANIFEST, WRITING_MARKER)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_committed(prefix: str) -> bool:
    """Whether ``prefix`` holds a committed output (its manifest exists)."""
    return exists(join(prefix, MANIFEST))


def _valid_manifest(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("files"), dict)


def _relative_listing(prefix: str) -> Iterator[tuple[str, int]]:
    """(name relative to ``prefix``, size) of every file under it, lazily."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        for o in _iter_s3(bucket, key, prefix):
            yield o["Key"][len(key):], int(o["Size"])
        return
    root = local_path(prefix)
    if not root.is_dir():
        return
    for p in root.rglob("*"):
        if p.is_file() or p.is_symlink():
            yield p.relative_to(root).as_posix(), p.lstat().st_size


def require_committed(prefix: str) -> dict:
    """Return the manifest of a committed output after checking every listed file's size.

    Raises :class:`IncompleteOutputError` for a prefix with no manifest, an interrupted commit, a
    listed file that is missing, or one whose size differs from the manifest (changed after
    commit). Content hashes are checked where files are read (:func:`read_output_table`,
    :func:`read_output_json`, :func:`verified_local_file`).
    """
    uri = join(prefix, MANIFEST)
    if not exists(uri):
        if exists(join(prefix, WRITING_MARKER)) or any(True for _ in _relative_listing(prefix)):
            raise IncompleteOutputError(
                f"incomplete output (no manifest: the writer died or is still running; re-run it) at {prefix}"
            )
        raise IncompleteOutputError(f"no output at {prefix} (nothing there: check the path or URI)")
    manifest = read_json(uri)
    if not _valid_manifest(manifest):
        raise IncompleteOutputError(f"malformed manifest {uri}: expected an object with a 'files' mapping")
    if exists(join(prefix, WRITING_MARKER)) and _read_marker(join(prefix, WRITING_MARKER)).get("committing"):
            raise IncompleteOutputError(f"interrupted commit at {prefix}: re-run the stage that writes it")
    sizes = dict(_relative_listing(prefix))
    for name, entry in sorted(manifest["files"].items()):
        if name not in sizes:
            raise IncompleteOutputError(f"{join(prefix, name)} is listed in {uri} but missing")
        if isinstance(entry, dict) and "size" in entry and int(entry["size"]) != sizes[name]:
            raise IncompleteOutputError(
                f"{join(prefix, name)} has {sizes[name]} bytes but its manifest says {entry['size']}: changed after commit"
            )
    return manifest


def _read_marker(uri: str) -> dict:
    try:
        marker = read_json(uri)
    except StoreError:
        return {}
    return marker if isinstance(marker, dict) else {}


def verify_file(path: Path, expected_sha: str | None, where: str) -> None:
    """Raise :class:`IncompleteOutputError` when ``path``'s sha256 is not ``expected_sha``."""
    if expected_sha and sha256_file(path) != expected_sha:
        raise IncompleteOutputError(f"{where} does not match the sha256 in its manifest: changed after commit")


@contextmanager
def verified_local_file(prefix: str, name: str, manifest: dict | None = None) -> Iterator[Path]:
    """A local path to committed file ``name`` whose sha256 matched the manifest (S3: a temp copy)."""
    manifest = manifest if manifest is not None else require_committed(prefix)
    entry = manifest["files"].get(name)
    uri = join(prefix, name)
    if entry is None:
        raise IncompleteOutputError(f"{uri} is not part of the committed output at {prefix}")
    if is_s3(uri):
        with tempfile.TemporaryDirectory() as tmp:
            path = download(uri, Path(tmp) / Path(name).name)
            verify_file(path, entry.get("sha256"), uri)
            yield path
        return
    path = local_path(uri)
    verify_file(path, entry.get("sha256"), uri)
    yield path


class OutputRefusedError(StoreError):
    """An output location holds data activedet did not write (or cannot hold an output)."""


def _refuse_bad_location(prefix: str) -> None:
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        if not key.strip("/"):
            raise OutputRefusedError(
                f"refusing to write an output at the bucket root {prefix}: give a key prefix, e.g. s3://{bucket}/runs/NAME"
            )
        return
    path = local_path(prefix)
    if path.exists() and not path.is_dir():
        raise OutputRefusedError(f"output location {prefix} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputRefusedError(f"output location {prefix} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputRefusedError(f"output location {prefix} is not writable ({probe}: permission denied)")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputRefusedError(f"output location {prefix} cannot be replaced ({path.parent}: permission denied)")


def claim_output(prefix: str) -> None:
    """Refuse ``prefix`` as an output unless it is empty or holds only an activedet output.

    An activedet output is a prefix with a valid ``_MANIFEST.json`` (and only the files it lists,
    plus ``_resume/`` state), or one carrying activedet's write marker (a write in progress or
    killed). Anything else raises :class:`OutputRefusedError` naming the prefix and what is
    there, before anything is touched. A bucket root is never an output.
    """
    _refuse_bad_location(prefix)
    listed: set[str] = set()
    marker = exists(join(prefix, WRITING_MARKER))
    if exists(join(prefix, MANIFEST)):
        try:
            manifest = read_json(join(prefix, MANIFEST))
        except StoreError:
            manifest = None
        if _valid_manifest(manifest):
            listed = set(manifest["files"])
        elif not marker:
            raise OutputRefusedError(
                f"refusing to replace {prefix}: its {MANIFEST} is not an activedet manifest; choose a new output location"
            )
    foreign: list[str] = []
    for name, _ in _relative_listing(prefix):
        if name in _OURS or name in listed or name.startswith(RESUME_DIR + "/") or (marker and not listed):
            continue
        foreign.append(name)
        if len(foreign) == 3:
            break
    if foreign:
        raise OutputRefusedError(
            f"refusing to replace {prefix}: it holds files activedet did not write "
            f"(e.g. {', '.join(foreign)}); choose an empty or new output location"
        )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _readable_mode(path: Path) -> None:
    """Give a file written through mkstemp (0600) the permissions of any other new file."""
    os.chmod(path, 0o666 & ~_umask())


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _swap_in_local(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder at ``target``; the previous ``target`` (ours) is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous output
        return
    old = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)


def _staging_prefix(prefix: str) -> str:
    parent, _, name = str(prefix).rstrip("/").rpartition("/")
    staged = f".{name}.staging-{uuid.uuid4().hex[:12]}"
    return f"{parent}/{staged}" if parent else staged


#: local scratch folders of open writers: ``<tmp>/activedet-out-<pid>-<random>``
SCRATCH_PREFIX = "activedet-out-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_dead_scratch() -> list[Path]:
    """Remove the local scratch folders of writers whose process is gone (killed with SIGKILL:
    no ``finally`` ran); folders of live processes and anything not named like ours stay."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(SCRATCH_PREFIX):].partition("-")[0]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def new_scratch_folder() -> Path:
    """A fresh local scratch folder of this process, ``<tmp>/activedet-out-<pid>-<random>``.

    The caller removes it; if this process is killed first (SIGKILL: no ``finally`` runs), the
    next scratch folder anyone takes removes it (:func:`remove_dead_scratch`).
    """
    remove_dead_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """:func:`new_scratch_folder`, removed when the block ends."""
    folder = new_scratch_folder()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stale_staging(prefix: str) -> list[str]:
    """Staging prefixes of earlier (killed) writers of ``prefix`` that carry our marker."""
    parent, _, name = str(prefix).rstrip("/").rpartition("/")
    pattern = f".{name}.staging-"
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        base_key = key.rstrip("/").rpartition("/")[0]
        search = (base_key + "/" if base_key else "") + pattern
        found = set()
        for o in _iter_s3(bucket, search, prefix):
            stem, _, rest = o["Key"][len(search):].partition("/")
            if rest == WRITING_MARKER:
                found.add(f"s3://{bucket}/{search}{stem}")
        return sorted(found)
    folder = local_path(parent) if parent else Path(".")
    if not folder.is_dir():
        return []
    return sorted(
        str(p) for p in folder.glob(pattern + "*") if p.is_dir() and (p / WRITING_MARKER).is_file()
    )


class OutputWriter:
    """Writes a stage's output prefix through a staging prefix and commits it atomically.

    Usage::

        with OutputWriter(out_uri) as out:
            out.write_table("boxes.parquet", table)
            out.write_json("metrics.json", metrics)
        # committed here: the manifest is written last and the staged files are swapped in

    Safety rules:

    * **Ownership**: opening refuses (:class:`OutputRefusedError`) a prefix that is not empty and
      holds anything but an activedet output, and a bucket root; nothing is touched then.
    * **Staged commit**: files go to a fresh sibling staging prefix (``.<name>.staging-<id>``);
      only a complete write replaces the output. Local: the staged folder is swapped in with an
      atomic directory exchange. S3: a commit marker is written, the previous files are
      replaced by server-side copies of the staged ones, then the manifest (a reader in that
      short window gets "interrupted commit"). A failed or killed write leaves the previous
      committed output readable and intact; the next writer removes stale staging.
    * ``resumable=True`` keeps ``_resume/`` state under the output prefix across failed runs
      (training resumes from it); the commit drops it.
    """

    def __init__(self, prefix: str, *, resumable: bool = False, meta: dict | None = None):
        self.prefix = str(prefix).rstrip("/")
        self.resumable = resumable
        self.meta = dict(meta or {})
        self._files: dict[str, dict] = {}
        self._tmp: Path | None = None
        self._staging: str | None = None
        self._open = False

    # -- lifecycle
    def __enter__(self) -> OutputWriter:
        claim_output(self.prefix)
        for stale in _stale_staging(self.prefix):
            log.info("removing staging of an earlier, unfinished write: %s", stale)
            delete_prefix(stale)
        self._staging = _staging_prefix(self.prefix)
        write_json(join(self._staging, WRITING_MARKER), {"writer": "activedet", "output": self.prefix, "pid": os.getpid()})
        if self.resumable and not is_committed(self.prefix):
            write_json(join(self.prefix, WRITING_MARKER), {"writer": "activedet", "resumable": True})
        self._tmp = new_scratch_folder()
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            if self._staging is not None and (exc_type is not None or self._open):
                delete_prefix(self._staging)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._open = False

    # -- writing
    def uri(self, name: str) -> str:
        """The URI ``name`` will have once the output is committed."""
        return join(self.prefix, name)

    def local_file(self, name: str) -> Path:
        """A scratch path to write ``name`` to before :meth:`add_file` (for libraries that need a path)."""
        self._require_open()
        path = self._tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _require_open(self) -> None:
        if not self._open:
            raise StoreError(f"output writer for {self.prefix} is not open (use it as a context manager)")

    def add_file(self, name: str, local: str | Path) -> str:
        """Stage a finished local file as ``name`` and record it for the manifest."""
        self._require_open()
        name = name.strip("/")
        if name in _OURS or name.startswith(RESUME_DIR + "/") or ".." in name.split("/"):
            raise StoreError(f"output file name {name!r} is reserved or escapes the output {self.prefix}")
        local = Path(local)
        self._files[name] = {"size": local.stat().st_size, "sha256": sha256_file(local)}
        upload(local, join(self._staging, name))
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
        """Write the manifest into the staging prefix and swap the staged output in."""
        self._require_open()
        manifest = {"format": MANIFEST_FORMAT, "files": self._files, "committed_at": time.time(), **self.meta}
        if is_s3(self.prefix):
            self._commit_s3(manifest)
        else:
            write_json(join(self._staging, MANIFEST), manifest)
            _remove(join(self._staging, WRITING_MARKER))
            _swap_in_local(local_path(self._staging), local_path(self.prefix))
        self._staging = None
        self._open = False

    def _commit_s3(self, manifest: dict) -> None:
        marker = join(self.prefix, WRITING_MARKER)
        write_json(marker, {"writer": "activedet", "committing": True, "staging": self._staging})
        _remove(join(self.prefix, MANIFEST))
        keep = set(self._files) | {WRITING_MARKER}
        stale = [n for n, _ in _relative_listing(self.prefix) if n not in keep]
        for name in self._files:
            copy_object(join(self._staging, name), join(self.prefix, name))
        for name in stale:
            _remove(join(self.prefix, name))
        write_json(join(self.prefix, MANIFEST), manifest)
        _remove(marker)
        delete_prefix(self._staging)


def _remove(uri: str) -> None:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise _s3_error(exc, uri, "DeleteObject") from exc
    else:
        local_path(uri).unlink(missing_ok=True)


def copy_object(src: str, dst: str) -> None:
    """Copy one object to another URI (S3: server-side, multipart when large)."""
    if is_s3(src) and is_s3(dst):
        sb, sk = _split_s3(src)
        db, dk = _split_s3(dst)
        try:
            s3_client().copy({"Bucket": sb, "Key": sk}, db, dk, Config=_transfer_config())
        except Exception as exc:
            raise _s3_error(exc, dst, "CopyObject") from exc
        return
    with tempfile.TemporaryDirectory() as tmp:
        upload(download(src, Path(tmp) / "obj"), dst)


def read_output_table(prefix: str, name: str, *, manifest: dict | None = None, **kwargs) -> pa.Table:
    """Read table ``name`` from a committed output, its size and sha256 checked against the manifest."""
    with verified_local_file(prefix, name, manifest) as path:
        return read_table(str(path), **kwargs) if not is_s3(prefix) else _read_parquet(path, join(prefix, name), **kwargs)


def _read_parquet(path: Path, where: str, *, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, memory_map=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"cannot read Parquet table {where}: {exc}") from None


def read_output_json(prefix: str, name: str, *, manifest: dict | None = None):
    """Read JSON file ``name`` from a committed output, its sha256 checked against the manifest."""
    with verified_local_file(prefix, name, manifest) as path:
        try:
            return json.loads(path.read_bytes())
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"malformed JSON in {join(prefix, name)}: {exc}") from None


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
