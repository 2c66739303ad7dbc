"""Active learning: acquisition scores, batch selection, the label ledger and core-set.

* :mod:`activedet.al.ledger` -- the versioned ledger (which train images are labeled / pending /
  unlabeled) that every cycle reads and writes.
* :mod:`activedet.al.scores` -- per-image acquisition scores from detector predictions
  (registry ``SCORES``: entropy, inconsistency, mc_dropout).
* :mod:`activedet.al.coreset` -- k-center greedy in O(N * d) memory (CPU or GPU).
* :mod:`activedet.al.selection` -- selection strategies (registry ``STRATEGIES``).
"""
