"""Progress a person can follow in a terminal and in a log.

In a terminal rich draws a live bar. When the output is not a terminal (a log file, CI,
``nohup``), a live bar shows nothing until the work ends, so an hour of extraction looks
hung. There :class:`PlainLines` prints one plain line per unit of work (a part of
clips, an epoch), as rich itself does for non-terminals, at most every ``interval``
seconds so that thousands of quick parts do not flood the log.
"""

from __future__ import annotations

import time

from rich.console import Console


class PlainLines:
    """Plain progress lines, printed only when ``console`` is not a terminal."""

    def __init__(self, console: Console, *, interval: float = 0.0) -> None:
        self.console = console
        self.enabled = not console.is_terminal
        self.interval = interval
        self._last = -float("inf")

    def __call__(self, text: str, *, last: bool = False) -> None:
        """Print ``text`` (no markup) unless one was printed less than ``interval`` s ago;
        ``last`` lines (the final count) are always printed."""
        now = time.monotonic()
        if self.enabled and (last or now - self._last >= self.interval):
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
            self._last = now


def clock(seconds: float) -> str:
    """``H:MM:SS`` as rich's elapsed column shows it."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
