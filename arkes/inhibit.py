"""No shutdown in the middle of an upgrade: while `os` builds, commits or stages a new system on a running
machine, it holds a logind "block" inhibitor for shutdown, reboot and sleep, which the kernel releases with the
process however it ends. /run/arkes/upgrade.json names the process for `os status` meanwhile."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from arkes import log
from arkes.target import is_booted_root

NOTE = Path("/run/arkes/upgrade.json")


@contextmanager
def holding(why: str) -> Iterator[None]:
    """Keep the running machine from shutting down, rebooting or sleeping while the block runs (on a sysroot
    directory, nothing to hold)."""
    if not is_booted_root(Path("/")):
        yield
        return
    fd = _inhibit(why)
    NOTE.parent.mkdir(parents=True, exist_ok=True)
    since = datetime.now(UTC).isoformat(timespec="seconds")
    NOTE.write_text(json.dumps({"pid": os.getpid(), "since": since, "what": why}) + "\n")
    try:
        yield
    finally:
        NOTE.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)


def _inhibit(why: str) -> int | None:
    """A file descriptor that holds logind's inhibitor until it is closed; None (and a warning) without logind."""
    import gi

    gi.require_version("Gio", "2.0")
    from gi.repository import Gio, GLib

    try:
        bus = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        reply, fds = bus.call_with_unix_fd_list_sync(
            "org.freedesktop.login1",
            "/org/freedesktop/login1",
            "org.freedesktop.login1.Manager",
            "Inhibit",
            GLib.Variant("(ssss)", ("shutdown:sleep", "os", why, "block")),
            GLib.VariantType("(h)"),
            Gio.DBusCallFlags.NONE,
            -1,
            None,
            None,
        )
    except GLib.Error as e:  # no system bus or no logind: the upgrade goes on, unprotected
        log.warn(f"shutdown is not held off while {why}: {e.message}")
        return None
    fd: int = fds.get(reply.unpack()[0])  # a duplicate: the list closes its own when it goes
    return fd


def in_progress() -> dict[str, object] | None:
    """The upgrade running on this machine now: its process id, since when, and what it does."""
    try:
        note = json.loads(NOTE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or not Path(f"/proc/{note.get('pid')}").exists():
        return None
    return note
