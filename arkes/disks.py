"""The disks a system can be installed to, as `lsblk` describes them.

A disk is offered when it is a whole disk (not a partition, a loop device, a RAM disk, an optical drive or a
device-mapper volume), writable, not empty, and not the one the running system was started from (the live
medium). A disk that holds partitions is offered too, but installing to it needs `--wipe`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arkes.errors import UsageError

LSBLK = ["lsblk", "--json", "--bytes", "--output", "NAME,PATH,TYPE,SIZE,MODEL,RO,RM,TRAN,MOUNTPOINTS,PKNAME"]
# Where dracut's live module (dmsquash-live) mounts the medium and the compressed root a live system runs from.
LIVE_MOUNTS = ("/run/initramfs/live", "/run/rootfsbase")


@dataclass(frozen=True)
class Disk:
    path: str
    size: int
    model: str
    transport: str
    removable: bool
    partitions: tuple[str, ...]

    def describe(self) -> str:
        what = " ".join(x for x in (self.model, f"({self.transport})" if self.transport else "") if x)
        held = f", {len(self.partitions)} partition(s)" if self.partitions else ", empty"
        return f"{self.path}  {human_size(self.size)}  {what or 'unknown model'}{held}"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _devices(tree: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for device in tree:
        yield device
        yield from _devices(device.get("children") or [])


def _mounts(device: dict[str, Any]) -> set[str]:
    """Every mount point of a device and of what it holds (partitions, volumes on them)."""
    found = {m for m in device.get("mountpoints") or [] if m}
    for child in device.get("children") or []:
        found |= _mounts(child)
    return found


def candidates(listing: dict[str, Any], live: Iterable[str] = LIVE_MOUNTS, *, loops: bool = False) -> list[Disk]:
    """The disks of an `lsblk --json` listing (LSBLK) that a system can be installed to: see the module. `loops`:
    loop devices too (a disk image a person attached and named), which are never offered by themselves."""
    offered = []
    kinds = ("disk", "loop") if loops else ("disk",)
    for device in listing.get("blockdevices") or []:
        if device.get("type") not in kinds or _flag(device.get("ro")) or not int(device.get("size") or 0):
            continue
        if _mounts(device) & ({"/", *live}):
            continue  # the running system's own disk, or the live medium
        children = [c for c in device.get("children") or [] if c.get("type") == "part"]
        offered.append(
            Disk(
                path=str(device.get("path") or f"/dev/{device['name']}"),
                size=int(device["size"]),
                model=str(device.get("model") or "").strip(),
                transport=str(device.get("tran") or ""),
                removable=_flag(device.get("rm")),
                partitions=tuple(str(c.get("path") or c["name"]) for c in children),
            )
        )
    return offered


def _flag(value: Any) -> bool:
    return value in (True, "1", 1)


def listing() -> dict[str, Any]:
    from arkes import run

    data: dict[str, Any] = json.loads(run.run(LSBLK, what="lsblk").stdout)
    return data


def choose(disks: list[Disk], path: str, *, wipe: bool) -> Disk:
    """The disk at `path` among `disks`; refused with the reason when it is not one of them, or when it holds
    partitions and `wipe` was not given."""
    resolved = str(Path(path).resolve())
    for disk in disks:
        if disk.path in (path, resolved):
            if disk.partitions and not wipe:
                raise UsageError(
                    f"{disk.path} holds partitions ({', '.join(disk.partitions)}); installing erases them",
                    hint="give --wipe (wipe = true in an answer file) to erase it",
                )
            return disk
    offered = "; ".join(d.describe() for d in disks) or "none"
    raise UsageError(
        f"{path} is not a disk this system can be installed to",
        hint=f"the disks offered (whole, writable, not the running system's): {offered}",
    )
