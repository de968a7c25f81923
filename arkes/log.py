"""Output for people: steps, progress and notes on stderr. Nothing else in the package prints for people.

Python's logging module is loaded with the first message, not before: a command with nothing to say (`os status`
from its cache) is over in less time than loading it and what it needs takes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

NAME = "arkes"
_debug: bool | None = None  # as `setup` was told; None: never set up (a library caller's logging applies)
_logger: logging.Logger | None = None


def setup(debug: bool) -> None:
    global _debug, _logger
    _debug, _logger = debug, None


def logger() -> logging.Logger:
    """The logger of `os`, set up as `setup` was told on first use."""
    global _logger
    if _logger is None:
        import logging

        found = logging.getLogger(NAME)
        if _debug is not None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            found.handlers[:] = [handler]
            found.setLevel(logging.DEBUG if _debug else logging.INFO)
            found.propagate = False
        _logger = found
    return _logger


def is_tty() -> bool:
    return sys.stderr.isatty()


def info(message: str) -> None:
    logger().info(message)


def warn(message: str) -> None:
    logger().warning(f"warning: {message}")


def error(message: str) -> None:
    logger().error(message)


def debug(message: str) -> None:
    if _debug is False:
        return  # set up without --debug: dropped, without loading logging for it
    logger().debug(message)


class Progress:
    """One long step. On a TTY a bar redrawn in place; otherwise one plain line per status change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()
        self._last_line = ""
        self._last_tenth = -1
        import logging

        self._tty = is_tty() and logger().isEnabledFor(logging.INFO) and not logger().isEnabledFor(logging.DEBUG)

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
            info(f"{self.name}: {detail}")

    def finish(self, ok: bool) -> None:
        elapsed = time.monotonic() - self.start
        if self._tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        info(f"{self.name}: {'done' if ok else 'failed'} ({elapsed:.1f}s)")


@contextmanager
def step(name: str) -> Iterator[Progress]:
    """A named step: announced, timed, and closed with done/failed."""
    progress = Progress(name)
    if not progress._tty:
        info(f"{name}...")
    ok = False
    try:
        yield progress
        ok = True
    finally:
        progress.finish(ok)
