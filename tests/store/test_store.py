"""Artifact store round trips and errors, on local paths and on S3 (moto's HTTP server)."""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest

from activedet import store
from activedet.errors import StoreError


def test_bytes_text_json_round_trip(base):
    store.write_bytes(store.join(base, "a/b.bin"), b"\x00\x01payload")
    store.write_text(store.join(base, "a/c.txt"), "héllo")
    store.write_json(store.join(base, "a/d.json"), {"k": [1, 2], "z": None})
    assert store.read_bytes(store.join(base, "a/b.bin")) == b"\x00\x01payload"
    assert store.read_text(store.join(base, "a/c.txt")) == "héllo"
    assert store.read_json(store.join(base, "a/d.json")) == {"k": [1, 2], "z": None}


def test_overwrite_replaces_content(base):
    uri = store.join(base, "x.bin")
    store.write_bytes(uri, b"first-version-long")
    store.write_bytes(uri, b"second")
    assert store.read_bytes(uri) == b"second"


def test_table_round_trip(base):
    table = pa.table({"image_id": ["a", "b"], "x": pa.array([1.5, 2.5], pa.float32())})
    uri = store.join(base, "t/table.parquet")
    store.write_table(table, uri)
    back = store.read_table(uri)
    assert back.equals(table)
    assert store.read_table(uri, columns=["x"]).column_names == ["x"]


def test_list_exists_delete(base):
    for name in ("p/a.txt", "p/sub/b.txt", "p/_resume/ck.txt", "pother/c.txt"):
        store.write_text(store.join(base, name), name)
    listed = store.list_uris(store.join(base, "p"))
    assert listed == sorted(store.join(base, n) for n in ("p/a.txt", "p/sub/b.txt", "p/_resume/ck.txt"))
    objs = store.list_objects(store.join(base, "p"))
    assert [o["uri"] for o in objs] == listed
    assert all(o["size"] > 0 and o["etag"] for o in objs)
    assert store.exists(store.join(base, "p/a.txt"))
    assert not store.exists(store.join(base, "p/missing.txt"))
    store.delete_prefix(store.join(base, "p"), keep=("_resume",))
    assert store.list_uris(store.join(base, "p")) == [store.join(base, "p/_resume/ck.txt")]
    store.delete_prefix(store.join(base, "p"))
    assert store.list_uris(store.join(base, "p")) == []
    assert store.exists(store.join(base, "pother/c.txt"))  # a sibling sharing the name prefix survives


def test_list_of_missing_prefix_is_empty(base):
    assert store.list_uris(store.join(base, "nothing-here")) == []


def test_streaming_read_in_chunks(base):
    data = os.urandom(3 * 1024 * 1024 + 17)
    uri = store.join(base, "big/stream.bin")
    store.write_bytes(uri, data)
    h = hashlib.sha256()
    chunks = 0
    with store.open_read(uri) as fh:
        while chunk := fh.read(256 * 1024):
            assert len(chunk) <= 256 * 1024
            h.update(chunk)
            chunks += 1
    assert chunks >= 12
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_upload_and_download(base, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    uri = store.join(base, "files/src.bin")
    store.upload(src, uri)
    out = store.download(uri, tmp_path / "dl" / "copy.bin")
    assert out.read_bytes() == src.read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_object_error_names_uri(base, tmp_path):
    uri = store.join(base, "no/such/object.bin")
    for call in (
        lambda: store.read_bytes(uri),
        lambda: store.read_table(uri),
        lambda: store.download(uri, tmp_path / "x.bin"),
    ):
        with pytest.raises(StoreError, match="no/such/object.bin"):
            call()
    with pytest.raises(StoreError, match="no/such/object.bin"):
        with store.open_read(uri):
            pass
    assert not (tmp_path / "x.bin").exists()


def test_malformed_json_is_store_error(base):
    uri = store.join(base, "bad.json")
    store.write_bytes(uri, b"{not json")
    with pytest.raises(StoreError, match="malformed JSON in .*bad.json"):
        store.read_json(uri)


def test_unsupported_scheme_rejected():
    with pytest.raises(StoreError, match="unsupported URI scheme.*gs://b/k"):
        store.read_bytes("gs://b/k")


def test_content_cache_local_uris_are_used_in_place(tmp_path):
    f = tmp_path / "img.png"
    f.write_bytes(b"png")
    cache = store.ContentCache(tmp_path / "cache")
    assert cache.prefetch([str(f)]) == 0
    assert cache.fetch(str(f)) == f
