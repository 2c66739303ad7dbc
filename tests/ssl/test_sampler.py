"""Balanced batch sampler: proportions, coverage, determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from activedet.errors import ConfigError
from activedet.ssl.sampler import BalancedBatchSampler


@pytest.mark.parametrize(("batch_size", "fraction", "n_lab"), [(4, 0.5, 2), (8, 0.25, 2), (6, 0.5, 3), (4, 0.1, 1), (4, 0.9, 3)])
def test_every_batch_has_the_configured_labeled_share(batch_size, fraction, n_lab):
    s = BalancedBatchSampler(5, 100, batch_size, labeled_fraction=fraction, seed=1)
    for lab, unl in s.iter_batches(0, 50):
        assert len(lab) == n_lab and len(unl) == batch_size - n_lab
        assert all(0 <= i < 5 for i in lab) and all(0 <= i < 100 for i in unl)


def test_each_pass_covers_every_image_once():
    s = BalancedBatchSampler(6, 10, 4, seed=0)
    lab = [i for b in s.iter_batches(0, 3) for i in b[0]]  # 6 labeled draws = one pass
    unl = [i for b in s.iter_batches(0, 5) for i in b[1]]  # 10 unlabeled draws = one pass
    assert sorted(lab) == list(range(6))
    assert sorted(unl) == list(range(10))
    many = Counter(i for b in s.iter_batches(0, 30) for i in b[0])
    assert set(many.values()) == {10}


def test_deterministic_by_seed_and_resumable():
    a = list(BalancedBatchSampler(7, 20, 4, seed=3).iter_batches(0, 12))
    b = list(BalancedBatchSampler(7, 20, 4, seed=3).iter_batches(0, 12))
    c = list(BalancedBatchSampler(7, 20, 4, seed=4).iter_batches(0, 12))
    assert a == b and a != c
    assert list(BalancedBatchSampler(7, 20, 4, seed=3).iter_batches(5, 12)) == a[5:]


def test_no_unlabeled_images_gives_labeled_only_batches():
    s = BalancedBatchSampler(3, 0, 4)
    lab, unl = s.batch(0)
    assert len(lab) == 4 and unl == []


def test_bad_settings_are_errors():
    with pytest.raises(ConfigError, match="no labeled images"):
        BalancedBatchSampler(0, 5, 4)
    with pytest.raises(ConfigError, match="labeled_fraction"):
        BalancedBatchSampler(1, 5, 4, labeled_fraction=0)
