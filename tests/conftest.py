"""Shared fixtures. Area-specific fixtures live in the conftest.py of each tests/ subfolder."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

# Tests run on a 2-core machine next to other work: keep torch to one intra-op thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on loopback (moto's server), shared by the session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request log is not the CLI's stderr
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the loopback S3 server; the standard AWS env points boto3 at it.

    Returns the bucket's base URI, e.g. ``s3://test-1a2b3c``.
    """
    import boto3

    from activedet import store

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    store._clients.clear()  # a client built for another endpoint must not be reused
    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"
    store._clients.clear()


# --------------------------------------------------------------------------- SynthDrive datasets


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> str:
    """URI of a small committed SynthDrive dataset (12 sequences x 5 frames, 128x256, seed 0).

    Shared by the session: treat it as read-only.
    """
    from activedet.data.synth import generate_synthdrive

    out = tmp_path_factory.mktemp("synthdrive") / "ds"
    generate_synthdrive(str(out), sequences=12, frames=5, seed=0, height=128, width=256)
    return str(out)


@pytest.fixture
def make_synth(tmp_path):
    """Factory: ``make_synth(name="ds", **overrides) -> uri`` generates SynthDrive into tmp_path.

    Defaults are small (6 sequences x 3 frames, seed 0); keyword overrides are SynthConfig fields.
    """
    from activedet.data.synth import generate_synthdrive

    def make(name: str = "ds", **overrides) -> str:
        settings = {"sequences": 6, "frames": 3, "seed": 0, **overrides}
        out = tmp_path / name
        generate_synthdrive(str(out), **settings)
        return str(out)

    return make


# --------------------------------------------------------------------------- real photos

# ../shared next to the checkout; CI may clone elsewhere, so also the workspace's shared folder.
_COCO128_CANDIDATES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco128",
    Path("/work/shared/datasets/coco128"),
)


@pytest.fixture(scope="session")
def coco128() -> Path:
    """The real COCO128 files (COCO JSON + images, and YOLO data.yaml + labels)."""
    env = os.environ.get("ACTIVEDET_COCO128")
    candidates = [Path(env)] if env else list(_COCO128_CANDIDATES)
    root = next((c for c in candidates if (c / "instances_train2017.json").is_file()), candidates[0])
    if not (root / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found at {root} (set ACTIVEDET_COCO128)")
    return root
