"""Which disks an installation offers, from what `lsblk --json` says: whole writable disks, never the running
system's own nor the live medium, and a disk holding partitions only with --wipe."""

from __future__ import annotations

from typing import Any

import pytest

from arkes import disks
from arkes.errors import UsageError


def disk(name: str, size: int, *, model: str = "", children: list[dict[str, Any]] | None = None, **more: Any) -> Any:
    return {
        "name": name,
        "path": f"/dev/{name}",
        "type": more.pop("type", "disk"),
        "size": size,
        "model": model,
        "ro": more.pop("ro", False),
        "rm": more.pop("rm", False),
        "tran": more.pop("tran", None),
        "mountpoints": more.pop("mountpoints", [None]),
        "children": children or [],
    }


def part(name: str, *mounts: str) -> dict[str, Any]:
    return {"name": name, "path": f"/dev/{name}", "type": "part", "size": 1 << 30, "mountpoints": list(mounts)}


LISTING = {
    "blockdevices": [
        disk("vda", 20 << 30, model="QEMU HARDDISK   ", tran="sata"),
        disk("sda", 64 << 30, model="SanDisk", tran="usb", rm=True, children=[part("sda1", "/run/initramfs/live")]),
        disk("nvme0n1", 512 << 30, model="Samsung SSD 980", tran="nvme", children=[part("nvme0n1p1"), part("p2")]),
        disk("sdb", 1 << 40, children=[part("sdb1", "/"), part("sdb2", "/boot")]),
        disk("loop0", 800 << 20, type="loop", mountpoints=["/run/rootfsbase"]),
        disk("sr0", 1 << 30, type="rom", ro=True),
        disk("zram0", 4 << 30),
        disk("sdc", 0, model="card reader"),
        disk("sdd", 8 << 30, ro="1"),
    ]
}


def test_only_whole_writable_disks_that_are_not_the_running_system_s_are_offered() -> None:
    offered = disks.candidates(LISTING)
    assert [d.path for d in offered] == ["/dev/vda", "/dev/nvme0n1", "/dev/zram0"]
    vda, nvme, _ = offered
    assert vda.model == "QEMU HARDDISK" and vda.partitions == () and vda.transport == "sata"
    assert nvme.partitions == ("/dev/nvme0n1p1", "/dev/p2")


def test_a_disk_is_described_by_its_size_model_and_partitions() -> None:
    vda, nvme, zram = disks.candidates(LISTING)
    assert vda.describe() == "/dev/vda  20.0 GiB  QEMU HARDDISK (sata), empty"
    assert nvme.describe() == "/dev/nvme0n1  512.0 GiB  Samsung SSD 980 (nvme), 2 partition(s)"
    assert zram.describe() == "/dev/zram0  4.0 GiB  unknown model, empty"


def test_choosing_refuses_the_live_medium_and_partitions_without_wipe() -> None:
    offered = disks.candidates(LISTING)
    assert disks.choose(offered, "/dev/vda", wipe=False).path == "/dev/vda"
    with pytest.raises(UsageError, match="holds partitions") as raised:
        disks.choose(offered, "/dev/nvme0n1", wipe=False)
    assert "--wipe" in (raised.value.hint or "")
    assert disks.choose(offered, "/dev/nvme0n1", wipe=True).partitions
    for refused in ("/dev/sda", "/dev/sdb", "/dev/sdb1", "/dev/loop0"):
        with pytest.raises(UsageError, match="is not a disk this system can be installed to") as raised:
            disks.choose(offered, refused, wipe=True)
        assert "/dev/vda  20.0 GiB" in (raised.value.hint or "")


def test_a_loop_device_is_taken_only_when_named_and_not_the_live_root() -> None:
    listing = {"blockdevices": [*LISTING["blockdevices"], disk("loop1", 6 << 30, type="loop")]}
    assert "/dev/loop1" not in [d.path for d in disks.candidates(listing)]
    named = disks.candidates(listing, loops=True)
    assert disks.choose(named, "/dev/loop1", wipe=False).size == 6 << 30
    assert "/dev/loop0" not in [d.path for d in named], "the live system's compressed root"


def test_the_live_medium_is_known_by_where_it_is_mounted() -> None:
    listing = {"blockdevices": [disk("vdb", 1 << 30, mountpoints=["/media/medium"])]}
    assert disks.candidates(listing, live=("/media/medium",)) == []
    assert [d.path for d in disks.candidates(listing, live=())] == ["/dev/vdb"]


@pytest.mark.parametrize(("size", "said"), [(512, "512 B"), (1536, "1.5 KiB"), (3 << 40, "3.0 TiB")])
def test_sizes(size: int, said: str) -> None:
    assert disks.human_size(size) == said
