"""Checks before a deployment is written: enough space on /boot and the root filesystem, and an /etc that OSTree
can merge. Peers find out about both at shutdown, when a staged deployment fails to finalize; here the upgrade is
refused before anything is deployed, with the numbers or the path."""

from __future__ import annotations

import os
from pathlib import Path

from arkes import du, etc
from arkes.errors import ArkesError
from arkes.ostree import Gio, Sysroot

MIB = 1024 * 1024
# Directories of the new checkout and the /etc merge's own files need room beyond the copied /etc.
ROOT_MARGIN = 64 * MIB
BOOT_MARGIN = 1 * MIB


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def _boot_files(sysroot: Sysroot, checksum: str) -> list[tuple[str, int]]:
    """(content checksum, size) of each kernel and initramfs in a commit."""
    modules = sysroot.commit_file(checksum, "usr/lib/modules")
    if modules is None:
        return []
    found = []
    for info in modules.enumerate_children("standard::name", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None):
        for name in ("vmlinuz", "initramfs.img"):
            node = modules.get_child(info.get_name()).get_child(name)
            if node.query_exists(None):
                node.ensure_resolved()
                size = node.query_info("standard::size", Gio.FileQueryInfoFlags.NONE, None).get_size()
                found.append((node.get_checksum(), int(size)))
    return found


def boot_space(sysroot: Sysroot, checksum: str) -> None:
    new = _boot_files(sysroot, checksum)
    present = {c for d in sysroot.deployments() for c, _ in _boot_files(sysroot, d.get_csum())}
    needed = sum(size for c, size in new if c not in present)
    if not needed:
        return
    boot = sysroot.path / "boot"
    st = os.statvfs(boot)
    free = st.f_bavail * st.f_frsize
    if needed + BOOT_MARGIN > free:
        raise ArkesError(
            f"not enough space on /boot for the new deployment's kernel and initramfs: "
            f"{_size(needed + BOOT_MARGIN)} needed, {_size(free)} free on {boot}",
            hint="remove old deployments with `os prune` and try again",
        )


def root_space(sysroot: Sysroot, etc: Path) -> None:
    needed = du.tree_bytes(etc) + ROOT_MARGIN
    st = os.statvfs(sysroot.path / "ostree")
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise ArkesError(
            f"not enough space on the root filesystem for the new deployment: "
            f"{_size(needed)} needed, {_size(free)} free on {sysroot.path}",
            hint="remove old deployments and build images with `os prune` and try again",
        )


def check(sysroot: Sysroot, checksum: str, machine_etc: Path, defaults: Path) -> None:
    etc.check_conflicts(sysroot, checksum, machine_etc, defaults)
    boot_space(sysroot, checksum)
    root_space(sysroot, machine_etc)
