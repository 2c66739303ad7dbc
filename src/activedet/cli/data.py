"""`activedet data` commands."""

from __future__ import annotations


def register(sub) -> None:
    """Add this group's commands to the top-level parser (filled in by its issue)."""
