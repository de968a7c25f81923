"""Checks before a deployment is written: enough space on /boot and the root filesystem, and an /etc that OSTree
can merge. Peers find out about both at shutdown, when a staged deployment fails to finalize; here the upgrade is
refused before anything is deployed, with the numbers or the path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import du, etc
from arkes.errors import ArkesError

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

MIB = 1024 * 1024
# Directories of the new checkout and the /etc merge's own files need room beyond the copied /etc.
ROOT_MARGIN = 64 * MIB
BOOT_MARGIN = 1 * MIB


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def boot_space(sysroot: Sysroot, checksum: str) -> None:
    new = sysroot.boot_files(checksum)
    present = {c for d in sysroot.deployments() for c, _ in sysroot.boot_files(d.checksum)}
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
