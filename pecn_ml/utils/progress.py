"""Progress lines with counts, rate and ETA for long loops (Dagster passes `context.log.info`)."""

from __future__ import annotations

import time
from typing import Callable, Optional

LogFn = Callable[[str], None]


class ProgressMeter:
    """Logs `name: done/total (rate unit/s, ETA)` at most every `every_s` seconds, and at the end."""

    def __init__(self, name: str, total: int, log: Optional[LogFn] = None,
                 every_s: float = 10.0, unit: str = "items"):
        self.name, self.total, self.unit, self.log, self.every_s = name, total, unit, log, every_s
        self.done, self.start, self._last = 0, time.perf_counter(), -float("inf")

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        finished = self.total and self.done >= self.total
        if self.log is not None and (finished or now - self._last >= self.every_s):
            self._last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
            self.log(f"{self.name}: {self.done}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, "
                     f"elapsed {elapsed:.1f}s, ETA {left:.1f}s) {extra}".rstrip())
