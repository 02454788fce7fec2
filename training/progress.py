"""Progress of long steps across processes: a child prints plain ``[progress]`` lines, the parent
(``benchmarks/main_job.py``) logs every line and shows the latest as one live console line with
elapsed and remaining time.

    [progress] 125/750 loss=1.2345
"""
from __future__ import annotations

import re
import sys
import time
from typing import TextIO

PREFIX = "[progress]"
_LINE = re.compile(r"^\[progress\] (\d+)/(\d+)((?: [A-Za-z_]+=\S+)*)\s*$")


def progress_line(done: int, total: int, **values: float | str) -> str:
    """``[progress] done/total key=value ...`` (floats with 4 decimals)."""
    parts = [f"{PREFIX} {done}/{total}"]
    parts += [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
    return " ".join(parts)


def parse_progress_line(line: str) -> tuple[int, int, dict[str, str]] | None:
    """The inverse of :func:`progress_line`; None for any other line."""
    m = _LINE.match(line.strip())
    if not m:
        return None
    values = dict(item.split("=", 1) for item in m.group(3).split())
    return int(m.group(1)), int(m.group(2)), values


def format_duration(seconds: float) -> str:
    """62 -> '1m02s', 3700 -> '1h01m', 5 -> '5s'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class LiveLine:
    """One console line for a step: ``[train] 125/750 loss=1.2345  elapsed 1m52s  remaining 9m20s``.

    On a terminal the line is redrawn in place; elsewhere (a CI log) a line is printed at most
    every ``every_s`` seconds and at the end, so the log shows progress without flooding.
    Remaining time = elapsed / (done - first done seen) * (total - done): a resumed run's
    earlier iterations do not count as speed.
    """

    def __init__(self, name: str, *, stream: TextIO | None = None, every_s: float = 15.0) -> None:
        self.name = name
        self.stream = stream or sys.stdout
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.first: int | None = None
        self.last_print = -1e9
        self.drawn = False
        self.text = ""

    def update(self, done: int, total: int, values: dict[str, str]) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = done - 1 if done > 0 else 0
        elapsed = now - self.t0
        rate_done = done - self.first
        remaining = elapsed / rate_done * (total - done) if rate_done > 0 else float("nan")
        extra = " ".join(f"{k}={v}" for k, v in values.items())
        eta = format_duration(remaining) if remaining == remaining else "?"
        self.text = (f"[{self.name}] {done}/{total}{' ' + extra if extra else ''}  elapsed {format_duration(elapsed)}"
                     f"  remaining {eta}")
        if self.stream.isatty():
            self.stream.write("\r" + self.text + "\x1b[K")
            self.stream.flush()
            self.drawn = True
        elif now - self.last_print >= self.every_s or done == total:
            print(self.text, file=self.stream, flush=True)
            self.last_print = now
        return self.text

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
