"""Progress reporting for long work: a tqdm bar on a terminal, periodic log lines elsewhere.

Pipelines run stages as subprocesses whose stderr is not a terminal; there a bar would print
carriage returns, so we log one line every ``interval`` seconds with rate and ETA instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("activedet.progress")


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts steps toward ``total``; call :meth:`update` per step with optional postfix fields."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", interval: float = 10.0, initial: int = 0):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = initial
        self._start_n = initial
        self._t0 = time.monotonic()
        self._last = self._t0
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total is not None and self.n >= self.total):
            self._last = now
            log.info("%s", self.line(**postfix))

    def line(self, **postfix) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_fmt_eta((self.total - self.n) / rate)}")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items()]
        return "  ".join(parts)

    @property
    def rate(self) -> float:
        return (self.n - self._start_n) / max(time.monotonic() - self._t0, 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with progress reporting."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit) as bar:
        for item in iterable:
            yield item
            bar.update()
