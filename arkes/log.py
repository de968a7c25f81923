"""Output for people: steps, progress and notes on stderr. Nothing else in the package prints for people."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("arkes")


def setup(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def is_tty() -> bool:
    return sys.stderr.isatty()


def info(message: str) -> None:
    logger.info(message)


def warn(message: str) -> None:
    logger.warning(f"warning: {message}")


def debug(message: str) -> None:
    logger.debug(message)


class Progress:
    """One long step. On a TTY a bar redrawn in place; otherwise one plain line per status change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()
        self._last_line = ""
        self._last_tenth = -1
        self._tty = is_tty() and logger.isEnabledFor(logging.INFO) and not logger.isEnabledFor(logging.DEBUG)

    def update(self, fraction: float | None, detail: str = "") -> None:
        if self._tty:
            if fraction is None:
                bar = ""
            else:
                fraction = min(max(fraction, 0.0), 1.0)
                filled = int(fraction * 24)
                bar = f"[{'#' * filled}{'.' * (24 - filled)}] {fraction * 100:3.0f}% "
            line = f"\r\033[K{self.name}: {bar}{detail}"[:200]
            sys.stderr.write(line)
            sys.stderr.flush()
        elif detail and detail != self._last_line:
            # Without a terminal, a line per tenth of the way is enough to show progress in a log.
            if fraction is not None:
                tenth = int(min(max(fraction, 0.0), 1.0) * 10)
                if tenth == self._last_tenth:
                    return
                self._last_tenth = tenth
            self._last_line = detail
            logger.info(f"{self.name}: {detail}")

    def finish(self, ok: bool) -> None:
        elapsed = time.monotonic() - self.start
        if self._tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        logger.info(f"{self.name}: {'done' if ok else 'failed'} ({elapsed:.1f}s)")


@contextmanager
def step(name: str) -> Iterator[Progress]:
    """A named step: announced, timed, and closed with done/failed."""
    progress = Progress(name)
    if not progress._tty:
        logger.info(f"{name}...")
    ok = False
    try:
        yield progress
        ok = True
    finally:
        progress.finish(ok)
