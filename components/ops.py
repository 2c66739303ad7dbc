"""Continuous-mode components (begin, ingest, import-labels, promote, finish).

The component functions live in the package (:mod:`activedet.ops.pipeline`) so the images carry
them; this module re-exports them next to the other component definitions.
"""

from activedet.ops.pipeline import KINDS, begin, finish, import_labels, ingest, make_ops_components, promote

__all__ = ["KINDS", "begin", "finish", "import_labels", "ingest", "make_ops_components", "promote"]
