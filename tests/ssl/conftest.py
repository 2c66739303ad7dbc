"""Fixtures for SSL tests: a ledger over the shared SynthDrive dataset and a tiny random teacher."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ssl_setup(synth_dataset, tmp_path_factory):
    """``(dataset_uri, ledger_uri, teacher_uri, labeled_ids, pool_ids)``: 6 labeled train images.

    The teacher is an untrained ``tiny`` detector (seed 0): it gives many low-score detections,
    enough to exercise filters and training plumbing.
    """
    import torch

    from activedet import store
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset, upload_checkpoint

    root = tmp_path_factory.mktemp("ssl")
    ds = load_dataset(synth_dataset)
    train = ds.split_ids("train")
    labeled = train[:6]
    ledger_uri = str(root / "ledger")
    with store.OutputWriter(ledger_uri) as out:
        write_ledger(out, new_ledger(train, labeled), cycle=0, parent=None)
    torch.manual_seed(0)
    det = detector_for_dataset("tiny", ds)
    teacher_uri = upload_checkpoint(det, str(root / "teacher"))
    return synth_dataset, ledger_uri, teacher_uri, labeled, sorted(set(train) - set(labeled))
