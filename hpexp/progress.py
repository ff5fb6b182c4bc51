"""Progress with time left: a tqdm bar on a terminal, plain lines through `logging` elsewhere.

hpexp reports through the `hpexp` logger, so Hydra's `train.log` holds what the console shows.
A bar is drawn only when a handler shows INFO on a terminal; in a piped log the same progress
is a line now and then, with no carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import IO, Any

__all__ = ["Progress", "console_is_terminal", "duration", "log", "use_console"]

log = logging.getLogger("hpexp")


def use_console(stream: IO[str] | None = None) -> None:
    """Show hpexp's INFO messages on `stream` (stdout) when no logging is configured (scripts, notebooks)."""
    if not log.hasHandlers():
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def console_is_terminal() -> bool:
    """A handler of the `hpexp` logger (or above it) shows INFO messages on a terminal."""
    return _terminal() is not None


def _terminal() -> tuple[logging.Logger, Any] | None:
    """The logger whose handler shows hpexp's INFO messages on a terminal, and that terminal."""
    if not log.isEnabledFor(logging.INFO):
        return None
    logger: Any = log
    while logger is not None:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if handler.level <= logging.INFO and stream is not None and _isatty(stream):
                return logger, stream
        logger = logger.parent if logger.propagate else None
    return None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`total` steps: `update(n, note)` after each; `left()` estimates the time still needed.

    On a terminal, a tqdm bar (done/total, elapsed<left, the note); elsewhere, with `every` seconds
    set, a log line at most that often and at the end. A caller that logs its own line per step
    (training epochs) leaves `every` unset and adds `left()` to its line."""

    def __init__(self, total: float, desc: str, unit: str = "it", every: float | None = None) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done: float = 0
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        self.terminal = _terminal()
        if self.terminal is not None:
            from tqdm import tqdm

            scale = unit == "B"
            self.bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=scale, leave=False, file=self.terminal[1]
            )

    def left(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        return (time.monotonic() - self.started) / self.done * max(0.0, self.total - self.done)

    def left_text(self) -> str:
        left = self.left()
        return "" if left is None else f"~{duration(left)} left"

    def update(self, n: float = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.every is not None and (now - self.last >= self.every or 0 < self.total <= self.done):
            self.last = now
            log.info(
                "%s: %s/%s %s, %s elapsed, %s%s",
                self.desc,
                _amount(self.done, self.unit),
                _amount(self.total, self.unit),
                self.unit if self.unit != "B" else "",
                duration(now - self.started),
                self.left_text() or "time left unknown",
                f"  {note}" if note else "",
            )

    def write(self, message: str) -> None:
        """Log a line without breaking the bar."""
        if self.bar is not None and self.terminal is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm(loggers=[self.terminal[0]]):
                log.info(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _amount(n: float, unit: str) -> str:
    return f"{n / 1e6:.1f} MB" if unit == "B" else f"{n:g}"
