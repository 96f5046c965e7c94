"""Progress that suits where the output goes: a bar on a terminal, sparse plain lines in a log file."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

# In a log file (no terminal), at most one progress line per this many seconds.
LOG_INTERVAL_S = 60.0


class Progress:
    """Counts ``total`` units of work (steps, images).

    On a terminal: a tqdm bar on stderr that disappears when done. Otherwise: one plain line on ``stream``
    at most every ``interval_s`` seconds (a short run prints none). ``enabled=False``: silent.
    """

    def __init__(
        self,
        total: int,
        description: str,
        unit: str,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval_s: float = LOG_INTERVAL_S,
    ):
        self.total, self.description, self.unit = total, description, unit
        self.stream = stream or sys.stdout
        self.interval_s = interval_s
        self.done = 0
        self.status = ""
        self.started = self.last_line = time.monotonic()
        terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=description, unit=unit, leave=False) if enabled and terminal else None
        self.lines = enabled and not terminal

    def update(self, count: int = 1, status: str = "") -> None:
        """``count`` more units are done; ``status`` (e.g. ``"loss=0.4312"``) is shown beside the count."""
        self.done += count
        self.status = status
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(count)
        elif self.lines and time.monotonic() - self.last_line >= self.interval_s:
            self.last_line = time.monotonic()
            rate = self.done / max(self.last_line - self.started, 1e-9)
            share = 100 * self.done / max(self.total, 1)
            print(
                f"{self.description}: {self.done}/{self.total} {self.unit} ({share:.0f} %)"
                f"{', ' + status if status else ''}, {rate:.3g} {self.unit}/s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
