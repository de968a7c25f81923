"""Services across an upgrade: what the merged /etc enables must exist in the new image.

OSTree's /etc merge already does the rest: a unit the new image enables arrives as a new link, a unit the person
disabled (link removed) or masked (link to /dev/null) on the machine stays so. What it cannot know is that a link
the machine keeps points at a unit the new image no longer ships; systemd would report it as not found on every
boot. Those links are removed from the new deployment, and each is named.
"""

from __future__ import annotations

import os
from pathlib import Path

# Where enablement lives in /etc, relative to the deployment root.
UNIT_DIRS = ("etc/systemd/system", "etc/systemd/user")
LINK_DIRS = (".wants", ".requires", ".upholds")


def _target_exists(root: Path, link: Path) -> bool:
    """Whether `link` (inside the deployment at `root`) leads to an existing file, resolving every hop inside
    the deployment rather than on the host."""
    current = link
    for _ in range(40):
        if not current.is_symlink():
            return current.exists()
        target = os.readlink(current)
        if target == "/dev/null":
            return True
        if target.startswith("/"):
            current = root / target.lstrip("/")
        else:
            current = current.parent / target
    return False


def dangling_links(root: Path) -> list[Path]:
    """Enablement and alias links in the deployment's /etc whose unit is not in the deployment."""
    found = []
    for unit_dir in UNIT_DIRS:
        top = root / unit_dir
        if not top.is_dir():
            continue
        for entry in sorted(top.iterdir()):
            if entry.is_symlink():
                if not _target_exists(root, entry):
                    found.append(entry)
            elif entry.is_dir() and entry.name.endswith(LINK_DIRS):
                for link in sorted(entry.iterdir()):
                    if link.is_symlink() and not _target_exists(root, link):
                        found.append(link)
    return found


def remove_dangling(root: Path) -> list[str]:
    """Remove the links `dangling_links` finds; return them as /etc paths for people."""
    removed = []
    for link in dangling_links(root):
        link.unlink()
        removed.append("/" + link.relative_to(root).as_posix())
    return removed
