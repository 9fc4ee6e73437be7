"""One progress-bar wrapper for long steps, on a terminal only and switchable.

Example::

    with Bar(total=n, desc="preprocess", enabled=show) as bar:
        for block in blocks:
            ...
            bar.update(len(block))

A bar draws ``desc  done/total  rate unit/s  ETA m:ss`` on one line of standard error,
at most five times a second, and only when ``enabled`` and standard error is a terminal
(so logs and CI output stay clean). Logging is unaffected.
"""

from __future__ import annotations

import sys
import time


class Bar:
    """A text progress bar with rate and ETA."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "particles",
                 stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = bool(enabled) and bool(isatty())
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.lines = 0  # lines drawn (for tests)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` and redraw if enough time has passed."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def text(self, now: float | None = None) -> str:
        """Return the line the bar shows now."""
        now = time.perf_counter() if now is None else now
        dt = max(now - self.t0, 1e-9)
        rate = self.done / dt
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "--:--" if left == float("inf") else f"{int(left) // 60}:{int(left) % 60:02d}"
        frac = self.done / self.total if self.total else 1.0
        width = 24
        fill = int(round(width * min(frac, 1.0)))
        return (f"{self.desc} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                f"{rate:,.0f} {self.unit}/s ETA {eta}")

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.text(now) + "\033[K")
        self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        """Finish the line."""
        if self.enabled and self.lines:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
