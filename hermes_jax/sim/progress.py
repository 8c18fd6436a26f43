"""Progress of a long run on stderr: a bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import sys


class ProgressBar:
    """``bar(done, total)`` after each segment of a run. On a terminal it redraws one line (carriage
    return); elsewhere (a log file, CI) it prints a line at each quarter, so logs stay readable."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quarter = 0

    def __call__(self, done: int, total: int) -> None:
        share = done / max(total, 1)
        if self.terminal:
            self.stream.write(f"\r{self.label} [{'#' * int(share * 30):<30s}] {share:6.1%}")
            if done >= total:
                self.stream.write("\n")
        else:
            while self.quarter < 4 and share >= (self.quarter + 1) / 4:
                self.quarter += 1
                self.stream.write(f"{self.label}: {self.quarter * 25}% of {total:,} steps\n")
        self.stream.flush()
