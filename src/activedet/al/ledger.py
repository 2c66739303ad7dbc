"""The label ledger: one row per train image with its state (labeled / pending / unlabeled).

A ledger is a committed output prefix (see :class:`activedet.store.OutputWriter`) holding
``ledger.parquet`` (schema.LEDGER) and ``ledger.json`` (``cycle``, ``parent`` URI, counts). Every
stage that changes states (init, select-batch, oracle, import-labels) writes a *new* prefix; the
previous version is never modified, so any cycle can be replayed or audited.

``cycle`` of a row is the active-learning cycle in which the image was selected (0 for the
initial random set); unlabeled rows carry ``-1``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from activedet import schema, store
from activedet.errors import ActivedetError

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.parquet"
LEDGER_META = "ledger.json"
UNSELECTED_CYCLE = -1


def read_ledger(uri: str) -> tuple[pa.Table, dict]:
    """Read and validate a committed ledger; returns ``(table, meta)``."""
    table = schema.validate_ledger(store.read_output_table(uri, LEDGER_FILE), where=store.join(uri, LEDGER_FILE))
    meta_uri = store.join(uri, LEDGER_META)
    meta = store.read_json(meta_uri) if store.exists(meta_uri) else {}
    return table, meta


def ledger_cycle(table: pa.Table, meta: dict) -> int:
    """The ledger's current cycle: ``meta['cycle']``, else the largest row cycle (0 if none)."""
    if "cycle" in meta:
        return int(meta["cycle"])
    cycles = table.column("cycle").to_numpy()
    return int(cycles.max()) if len(cycles) else 0


def ids_in_state(table: pa.Table, *states: str) -> list[str]:
    """Image ids whose state is one of ``states``, in ledger order."""
    mask = pc.is_in(table.column("state"), value_set=pa.array(list(states), pa.string()))
    return table.filter(mask).column("image_id").to_pylist()


def counts(table: pa.Table) -> dict[str, int]:
    states = table.column("state").to_pylist()
    return {s: states.count(s) for s in schema.LEDGER_STATES}


def new_ledger(image_ids: Iterable[str], labeled: Iterable[str], cycle: int = 0) -> pa.Table:
    """A ledger over ``image_ids`` (sorted) with ``labeled`` labeled in ``cycle``, others unlabeled."""
    ids = sorted(set(image_ids))
    lab = set(labeled)
    unknown = lab.difference(ids)
    if unknown:
        raise ActivedetError(f"ledger: {len(unknown)} labeled image(s) not in the pool, e.g. {sorted(unknown)[0]!r}")
    states = ["labeled" if i in lab else "unlabeled" for i in ids]
    cycles = [cycle if i in lab else UNSELECTED_CYCLE for i in ids]
    return schema.make_ledger(ids, states, cycles)


def set_state(table: pa.Table, image_ids: Iterable[str], state: str, *, cycle: int | None = None, allowed_from: tuple[str, ...] | None = None) -> pa.Table:
    """A copy of ``table`` with ``image_ids`` moved to ``state`` (and ``cycle`` when given).

    Raises when an id is not in the ledger, or its current state is not in ``allowed_from``.
    """
    ids = table.column("image_id").to_pylist()
    pos = {i: k for k, i in enumerate(ids)}
    states = table.column("state").to_pylist()
    cycles = table.column("cycle").to_numpy().astype(np.int32).copy()
    for iid in image_ids:
        k = pos.get(iid)
        if k is None:
            raise ActivedetError(f"ledger: image {iid!r} is not in the ledger")
        if allowed_from is not None and states[k] not in allowed_from:
            raise ActivedetError(f"ledger: image {iid!r} is {states[k]}, expected one of {list(allowed_from)}")
        states[k] = state
        if cycle is not None:
            cycles[k] = cycle
    return schema.make_ledger(ids, states, cycles.tolist())


def write_ledger(out: store.OutputWriter, table: pa.Table, *, cycle: int, parent: str | None, **extra) -> dict:
    """Validate and write ``table`` + its metadata into an open output writer; returns the meta."""
    table = schema.validate_ledger(table, where=out.uri(LEDGER_FILE))
    meta = {"cycle": int(cycle), "parent": parent, "counts": counts(table), **extra}
    out.write_table(LEDGER_FILE, table)
    out.write_json(LEDGER_META, meta)
    log.info("ledger cycle %d: %s", cycle, meta["counts"])
    return meta
