"""S3-only behaviour: multipart uploads, missing buckets, the content cache (moto's HTTP server)."""

from __future__ import annotations

import hashlib
import io
import os

import boto3
import pytest

from activedet import store
from activedet.errors import StoreError


@pytest.fixture
def small_multipart(monkeypatch):
    """S3's minimum part size is 5 MiB: lower the thresholds so ~12 MiB goes multipart."""
    monkeypatch.setattr(store, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(store, "MULTIPART_CHUNK", 5 * 1024 * 1024)


def _etag(uri: str) -> str:
    bucket, key = store._split_s3(uri)
    return store.s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def test_multipart_upload_round_trip(s3_bucket, small_multipart, tmp_path):
    data = os.urandom(12 * 1024 * 1024 + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = store.join(s3_bucket, "big/file.bin")
    store.upload(src, uri)
    assert _etag(uri).endswith("-3")  # multipart ETags carry the part count
    assert hashlib.sha256(store.download(uri, tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    store.write_bytes(store.join(s3_bucket, "big/bytes.bin"), data)
    assert "-" in _etag(store.join(s3_bucket, "big/bytes.bin"))
    assert store.read_bytes(store.join(s3_bucket, "big/bytes.bin")) == data


def test_small_object_single_part(s3_bucket):
    uri = store.join(s3_bucket, "small.bin")
    store.write_bytes(uri, b"x" * 1000)
    assert "-" not in _etag(uri)


def test_missing_bucket_error_names_uri(s3_bucket):
    uri = "s3://no-such-bucket-activedet/k.bin"
    with pytest.raises(StoreError, match="bucket does not exist: s3://no-such-bucket-activedet/k.bin"):
        store.read_bytes(uri)
    with pytest.raises(StoreError, match="no-such-bucket-activedet"):
        store.write_bytes(uri, b"x")
    with pytest.raises(StoreError, match="no-such-bucket-activedet"):
        store.list_uris("s3://no-such-bucket-activedet/prefix")


def test_missing_key_error_says_not_found(s3_bucket):
    with pytest.raises(StoreError, match=f"object not found: {s3_bucket}/nope"):
        store.read_bytes(f"{s3_bucket}/nope")


def test_bad_s3_uri():
    with pytest.raises(StoreError, match="bad S3 URI"):
        store.read_bytes("s3:///key-without-bucket")


def test_content_cache_prefetch_and_reuse(s3_bucket, tmp_path):
    uris = []
    for i in range(12):
        uri = store.join(s3_bucket, f"imgs/{i:03d}.png")
        store.write_bytes(uri, f"image-{i}".encode())
        uris.append(uri)
    cache = store.ContentCache(tmp_path / "cache")
    assert cache.prefetch(uris + uris[:3], workers=4) == 12  # duplicates fetched once
    for i, uri in enumerate(uris):
        path = cache.fetch(uri)
        assert path.read_bytes() == f"image-{i}".encode()
        assert path.suffix == ".png"
    assert cache.prefetch(uris) == 0  # all cached
    # reuse: the cache never goes back to S3 for an object it holds
    bucket, key = store._split_s3(uris[0])
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).delete_object(Bucket=bucket, Key=key)
    assert cache.fetch(uris[0]).read_bytes() == b"image-0"
    # a second cache on the same root sees the same files
    assert store.ContentCache(tmp_path / "cache").prefetch(uris) == 0


class _CuttingProxy:
    """A loopback TCP proxy to the S3 server that drops its first connection after forwarding
    ``cut`` bytes of the answer (a connection lost mid-download), then forwards faithfully."""

    def __init__(self, upstream: str, cut: int):
        import socket
        import threading
        from urllib.parse import urlparse

        up = urlparse(upstream)
        self.upstream, self.cut, self.connections = (up.hostname, up.port), cut, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.upstream)
            limit = self.cut if self.connections == 1 else None
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, limit), daemon=True).start()

    @staticmethod
    def _pump(src, dst, limit) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_download_resumes_a_connection_lost_mid_body(s3_bucket, s3_server, tmp_path, monkeypatch, caplog):
    data = os.urandom(3 * 1024 * 1024 + 7)
    uri = store.join(s3_bucket, "resume/obj.bin")
    store.write_bytes(uri, data)
    proxy = _CuttingProxy(s3_server, cut=1024 * 1024)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    store._clients.clear()
    try:
        with caplog.at_level("WARNING", logger="activedet.store"):
            out = store.download(uri, tmp_path / "obj.bin")
    finally:
        proxy.close()
    assert out.read_bytes() == data
    assert proxy.connections >= 2 and "resuming" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def test_ranged_download_is_opt_in_by_size_and_bad_values_are_errors(s3_bucket, small_multipart, tmp_path, monkeypatch):
    data = os.urandom(11 * 1024 * 1024)
    uri = store.join(s3_bucket, "ranged/obj.bin")
    store.write_bytes(uri, data)
    monkeypatch.setenv("ACTIVEDET_S3_RANGED_MIN_MB", "1")
    assert store.download(uri, tmp_path / "a.bin").read_bytes() == data  # 3 ranged parts
    monkeypatch.setenv("ACTIVEDET_S3_RANGED_MIN_MB", "0")
    with pytest.raises(StoreError, match="ACTIVEDET_S3_RANGED_MIN_MB='0' must be positive"):
        store.download(uri, tmp_path / "b.bin")
    monkeypatch.setenv("ACTIVEDET_S3_RANGED_MIN_MB", "lots")
    with pytest.raises(StoreError, match="is not a number"):
        store.download(uri, tmp_path / "b.bin")


def test_download_of_a_missing_key_leaves_no_temp_file(s3_bucket, tmp_path):
    with pytest.raises(StoreError, match=f"object not found: {s3_bucket}/nope.bin"):
        store.download(f"{s3_bucket}/nope.bin", tmp_path / "nope.bin")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("size", [0, 1, 2 * 1024 * 1024, 2 * 1024 * 1024 + 1, 17 * 1024 * 1024 + 3])
def test_download_streams_every_size_byte_exact(s3_bucket, tmp_path, size):
    """Around the small-object and buffer sizes: one buffer, several buffers, a short last read."""
    data = os.urandom(size)
    uri = store.join(s3_bucket, f"sizes/{size}.bin")
    store.write_bytes(uri, data)
    out = store.download(uri, tmp_path / "obj.bin")
    assert out.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.bin"]
    assert (out.stat().st_mode & 0o777) == 0o644


def test_download_falls_back_to_the_body_read_when_the_raw_response_is_not_there(monkeypatch):
    class Body:  # a streaming body without urllib3's raw http.client response
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, n=-1):
            return self.data.read(n)

    buffer = memoryview(bytearray(4))
    r, w = os.pipe()
    try:
        assert store._copy_body(Body(b"0123456789"), w, 10, buffer) == 10
        assert os.read(r, 100) == b"0123456789"
        assert store._copy_body(Body(b"01"), w, 10, buffer) == 2  # the body ended early: the caller resumes
    finally:
        os.close(r)
        os.close(w)
