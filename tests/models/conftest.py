"""Fixtures for detector tests: a small SynthDrive dataset (session-wide) and an untrained checkpoint."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def synth(synth_dataset):
    from activedet.data.dataset import load_dataset

    return load_dataset(synth_dataset)


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory, synth):
    """A committed checkpoint of an untrained ``tiny`` detector for ``synth``'s classes."""
    from activedet import store
    from activedet.models.checkpoint import detector_for_dataset, write_checkpoint

    torch.manual_seed(0)
    det = detector_for_dataset("tiny", synth)
    uri = str(tmp_path_factory.mktemp("ckpt") / "teacher")
    with store.OutputWriter(uri) as out:
        write_checkpoint(out, det, metrics={"note": "untrained"})
    return uri
