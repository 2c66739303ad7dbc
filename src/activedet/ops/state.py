"""Persistent state of continuous mode, shared by scheduled runs and updated optimistically.

Each scheduled run is one cycle on persistent state: the current dataset (images table) and
ledger versions, the model lineage and the champion. The state lives in the store under
``ROOT/state/``::

    state/v000001.json   immutable versions, each created with a *conditional* put
    state/v000002.json   (S3 ``If-None-Match: *``; locally a hard link, which fails if the
    state/HEAD.json      target exists) plus a HEAD pointer to the latest version (a hint)

A run reads version ``n`` when it starts and commits ``n + 1`` when it ends. If another run
committed ``n + 1`` in between, the conditional put fails and the loser gets
:class:`~activedet.errors.ConcurrentUpdateError`: two overlapping runs can never both win, and
no version is ever overwritten. Readers trust the versions, not HEAD: they follow HEAD and then
probe for newer versions, so a run that died between creating a version and moving HEAD loses
nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

from pydantic import Field

from activedet import store
from activedet.config import FrozenModel
from activedet.errors import ConcurrentUpdateError, StoreError

log = logging.getLogger(__name__)

STATE_DIR = "state"
HEAD = "HEAD.json"


class Champion(FrozenModel):
    """The promoted model: registry version, checkpoint and the metric it won with."""

    model_name: str
    version: str
    checkpoint_uri: str
    metric: str
    value: float


class State(FrozenModel):
    """What one continuous-mode run hands to the next."""

    version: int = Field(0, description="state version this object was read at (0: none yet)")
    cycle: int = Field(0, description="number of completed continuous-mode cycles")
    dataset_uri: str | None = Field(None, description="current dataset (images table) version")
    ledger_uri: str | None = Field(None, description="current ledger version")
    champion: Champion | None = None
    lineage: list[dict[str, Any]] = Field(default_factory=list, description="one entry per cycle: models, metrics, promotion")
    exports: list[str] = Field(default_factory=list, description="label-export URIs, oldest first")
    imported: list[str] = Field(default_factory=list, description="label files already imported (URIs)")
    updated_at: float = 0.0
    run_id: str | None = None


def _version_uri(root: str, version: int) -> str:
    return store.join(root, STATE_DIR, f"v{version:06d}.json")


def _create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` only if it does not exist. Returns False if it already did."""
    if store.is_s3(uri):
        bucket, key = store._split_s3(uri)
        try:
            store.s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise store._s3_error(exc, uri) from exc
        return True
    path = store.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write the content first, then hard-link it into place: link() fails if the target exists,
    # and readers never see a partly written version
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


class StateStore:
    """Versioned state under ``root`` with optimistic concurrency."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")

    def latest_version(self) -> int:
        head = store.join(self.root, STATE_DIR, HEAD)
        version = int(store.read_json(head)["version"]) if store.exists(head) else 0
        while store.exists(_version_uri(self.root, version + 1)):  # HEAD may lag behind
            version += 1
        return version

    def read(self, version: int | None = None) -> State:
        """The state at ``version`` (default: the latest); an empty State when none exists yet."""
        version = self.latest_version() if version is None else version
        if version == 0:
            return State()
        uri = _version_uri(self.root, version)
        data = store.read_json(uri)
        try:
            return State.model_validate({**data, "version": version})
        except ValueError as exc:
            raise StoreError(f"corrupt state {uri}: {str(exc).splitlines()[0]}") from None

    def commit(self, state: State, *, expected_version: int | None = None) -> State:
        """Write ``state`` as version ``expected_version + 1`` (default: ``state.version + 1``).

        Raises :class:`ConcurrentUpdateError` when that version already exists, i.e. another run
        updated the state after this one read it.
        """
        base = state.version if expected_version is None else expected_version
        new = state.model_copy(update={"version": base + 1, "updated_at": time.time()})
        uri = _version_uri(self.root, new.version)
        payload = (json.dumps(new.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()
        if not _create_exclusive(uri, payload):
            raise ConcurrentUpdateError(
                f"state {self.root}: another run committed version {new.version} after this run read "
                f"version {base} (latest is now {self.latest_version()}); this run's results were not "
                "recorded -- re-run it on the new state"
            )
        store.write_json(store.join(self.root, STATE_DIR, HEAD), {"version": new.version})
        log.info("state %s: committed version %d (cycle %d)", self.root, new.version, new.cycle)
        return new

    def history(self) -> list[State]:
        return [self.read(v) for v in range(1, self.latest_version() + 1)]
