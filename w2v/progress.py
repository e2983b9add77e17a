"""Progress for people and for log files: a tqdm bar on a terminal, plain lines in a file.

On a cluster stderr is a file, and a bar's carriage-return updates (every 0.1 s for days) make a
log of tens of megabytes that `grep` and `less` cannot read. So when stderr is not a terminal,
`Progress` prints a plain line (`sharding: 1200/5000 utt, 41.5 utt/s, ETA 0:01:31`) at most every
`interval` seconds and one at the end; with `interval=None` it prints nothing itself (the
training loop prints one line per logging step instead).
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LOG_INTERVAL_SECONDS = 30.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def eta(done: int, total: int | None, elapsed: float) -> str:
    """h:mm:ss to go at the rate so far, or "?"."""
    if not total or done <= 0 or elapsed <= 0:
        return "?"
    return str(datetime.timedelta(seconds=round((total - done) * elapsed / done)))


class Progress:
    """The part of tqdm's interface this project uses: `update`, `set_postfix`, `close`, iteration."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False,
                 interval: float | None = LOG_INTERVAL_SECONDS):
        self.iterable, self.desc, self.unit, self.disable, self.interval = iterable, desc, unit, disable, interval
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.n, self.start_n = initial, initial
        self.postfix: dict = {}
        self.bar = None if disable or not on_terminal() else tqdm(
            total=self.total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05)
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif not self.disable and self.interval is not None and time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(refresh=False, **values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif not self.disable and self.interval is not None and self.n > self.start_n:
            self._line()
            self.disable = True  # once

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        total = f"/{self.total}" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}{total} {self.unit}, {rate:.1f} {self.unit}/s, "
              f"ETA {eta(self.n - self.start_n, (self.total or 0) - self.start_n, elapsed)}{extra}",
              file=sys.stderr, flush=True)
        self.last = now


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
