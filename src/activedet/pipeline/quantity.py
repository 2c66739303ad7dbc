"""Kubernetes resource quantities ("500m", "4", "16Gi"): parse, compare, add.

Used by the experiment's ``kubernetes`` settings to check that limits are not below requests and
to derive default limits (GPU stages: memory request + the memory-backed ``/dev/shm``, which
counts against the container's memory limit).
"""

from __future__ import annotations

import re
from fractions import Fraction

QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_FACTOR = {
    None: 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def is_quantity(text: str) -> bool:
    return bool(QUANTITY.match(text))


def parse(text: str) -> Fraction:
    """The value of a quantity in base units (cores, bytes); ValueError when malformed."""
    match = QUANTITY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return Fraction(match.group(1)) * _FACTOR[match.group(2)]


def add_memory(a: str, b: str) -> str:
    """``a + b`` for memory quantities, as whole Mi (rounded up)."""
    total = parse(a) + parse(b)
    mib = -(-total // 2**20)
    return f"{mib}Mi"


def scale_cpu(cpu: str, factor: int) -> str:
    """``cpu * factor`` in millicores."""
    return f"{int(parse(cpu) * factor * 1000)}m"
