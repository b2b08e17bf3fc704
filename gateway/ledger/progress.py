"""A dependency-free progress bar on stderr for the operator's long-running commands."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_INTERVAL_SECONDS = 0.1


class Progress:
    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label, self.total, self.done, self.out = label, max(total, 0), 0, out
        self._drawn_at = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._drawn_at >= REDRAW_INTERVAL_SECONDS:
            self._drawn_at = now
            self._draw()

    def _draw(self, end: str = "") -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(frac * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.out.write(f"\r{self.label} [{bar}] {frac:6.1%} {self.done}/{self.total}{end}")
        self.out.flush()

    def close(self) -> None:
        self._draw("\n")
