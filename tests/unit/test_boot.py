"""Boot pieces that need no machine: the GRUB menu, the BIOS setup of a disk, the partition plan, QEMU's argv."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from arkes import bootloader, diskimage, vm
from arkes.errors import UsageError

ENTRIES = [
    bootloader.MenuEntry(
        title="Arkēs 0: 20261129.2 (localhost/arkes:base)",
        linux="/ostree/arkes-abc/vmlinuz-6.1.0-56-amd64",
        initrd="/ostree/arkes-abc/initramfs-6.1.0-56-amd64.img",
        options="root=UUID=1234 rw console=ttyS0,115200 ostree=/ostree/boot.1/arkes/abc/0",
    ),
    bootloader.MenuEntry(
        title="Arkēs 1: it's old",
        linux="/ostree/arkes-def/vmlinuz",
        initrd="/ostree/arkes-def/initramfs.img",
        options="root=UUID=1234 rw quiet$x",
    ),
]


def test_menu_matches_saved_output() -> None:
    text = bootloader.render_menu(ENTRIES)
    path = Path(__file__).parent / "data/grub.cfg"
    if os.environ.get("ARKES_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_menu_orders_entries_and_defaults_to_the_first() -> None:
    text = bootloader.render_menu(ENTRIES)
    assert "set default=0" in text
    assert text.index("Arkēs 0:") < text.index("Arkēs 1:")
    assert "serial --unit=0 --speed=115200" in text
    assert "menuentry 'Arkēs 1: it'\\''s old' --id arkes-1 {" in text
    assert "'quiet$x'" in text, "a $ would be expanded by GRUB unless quoted"


def test_empty_menu_says_so() -> None:
    assert "No Arkēs deployment" in bootloader.render_menu([])


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "grub.cfg"
    target.write_text("old")
    bootloader.atomic_write(target, "new contents\n")
    assert target.read_text() == "new contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grub.cfg"]


def test_bios_setup_patches_mbr_and_block_list(tmp_path: Path) -> None:
    if not (bootloader.GRUB_LIB / "i386-pc/boot.img").is_file():
        pytest.fail("grub-pc-bin is not installed (make setup installs it)")
    disk = tmp_path / "disk.img"
    mbr = bytearray(512)
    mbr[0x1B8:0x1BC] = b"SIGN"
    mbr[0x1FE:0x200] = b"\x55\xaa"
    disk.write_bytes(bytes(mbr) + b"\0" * (4096 * 512))
    diskboot = (bootloader.GRUB_LIB / "i386-pc/diskboot.img").read_bytes()
    core = diskboot + b"\x01" * 5000
    bootloader.install_bios(disk, core, partition_start=2048, partition_sectors=2048)
    data = disk.read_bytes()
    assert data[0x1B8:0x1BC] == b"SIGN", "the partition table area is kept"
    assert data[0x1FE:0x200] == b"\x55\xaa"
    assert struct.unpack_from("<Q", data, bootloader.KERNEL_SECTOR)[0] == 2048
    start, length, segment = struct.unpack_from("<QHH", data, 2048 * 512 + bootloader.BLOCKLIST)
    assert (start, length, segment) == (2049, (len(core) + 511) // 512 - 1, 0x820)
    assert data[2049 * 512 : 2049 * 512 + 10] == b"\x01" * 10


def test_core_image_too_big_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 8192)
    with pytest.raises(Exception, match="does not fit"):
        bootloader.install_bios(disk, b"\0" * 4096, partition_start=2, partition_sectors=4)


def test_partition_plan() -> None:
    script = diskimage.partition_script()
    assert script.startswith("label: gpt\n")
    assert "name=bios, size=1MiB, type=21686148-6449-6E6F-744E-656564454649" in script
    assert "name=esp, size=256MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in script
    assert script.rstrip().endswith("name=root, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")


@pytest.mark.parametrize(("text", "size"), [("10G", 10 * 1024**3), ("512M", 512 * 1024**2), ("4096", 4096)])
def test_sizes(text: str, size: int) -> None:
    assert diskimage.parse_size(text) == size


def test_bad_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        diskimage.parse_size("ten gigs")


def test_qemu_argv_bios_tcg(tmp_path: Path) -> None:
    argv = vm.qemu_argv(vm.Config(disk=Path("/d.img")), tmp_path, kvm=False, interactive=False)
    joined = " ".join(argv)
    assert "-accel tcg,thread=multi" in joined
    assert "file=/d.img,format=raw,if=virtio" in joined
    assert "name=org.qemu.guest_agent.0" in joined
    assert "pflash" not in joined


def test_qemu_argv_uefi_kvm_interactive(tmp_path: Path) -> None:
    argv = vm.qemu_argv(
        vm.Config(disk=Path("/d.img"), uefi=True, memory=1024, cpus=1), tmp_path, kvm=True, interactive=True
    )
    joined = " ".join(argv)
    assert "-accel kvm -cpu host" in joined
    assert f"file={vm.OVMF_CODE}" in joined and "OVMF_VARS.fd" in joined
    assert "-serial mon:stdio" in joined and "-m 1024" in joined and "-smp 1" in joined


def test_root_password_is_hashed_into_shadow(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\nuser:!:19000:0:99999:7:::\n")
    shadow.chmod(0o640)
    diskimage._set_root_password(tmp_path, "s3cret")
    root, user = shadow.read_text().splitlines()
    fields = root.split(":")
    assert fields[1].startswith("$6$") and len(fields[1]) > 50
    assert fields[2:] == ["19000", "0", "99999", "7", "", "", ""]
    assert user == "user:!:19000:0:99999:7:::"
    assert shadow.stat().st_mode & 0o777 == 0o640
    # The hash verifies: openssl recomputes it from the same salt (Python 3.13 has no crypt module).
    salt = fields[1].split("$")[2]
    again = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input="s3cret", capture_output=True, text=True, check=True
    )
    assert again.stdout.strip() == fields[1]
    diskimage._set_root_password(tmp_path, None)
    assert shadow.read_text().splitlines()[0] == "root::19000:0:99999:7:::"


def test_the_console_counts_boots_and_expects_the_panics_of_those_before_the_last(tmp_path: Path) -> None:
    """A guest told to reboot twice by itself: the panics of its first two boots are expected, one of the third
    is a failure."""
    ours, guests = socket.socketpair()
    console = vm.Console(ours, tmp_path / "console.log", None, reboots=2)
    menu = b"GNU GRUB  Use the arrow keys to select which entry is highlighted.\r\n"
    boot = menu + menu + b"[    0.000000] Linux version 6.12.57+deb13-amd64\r\n"  # drawn twice, as GRUB does
    panic = b"[    9.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n"
    guests.sendall(boot + panic + boot + panic + boot + b"Welcome\r\n")
    deadline = time.monotonic() + 10
    while console.boots < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert console.boots == 3 and console.panic is None and len(console.expected_panics) == 2
    guests.sendall(panic)
    guests.close()
    console.closed.wait(timeout=10)
    assert console.panic is not None and "Attempted to kill init" in console.panic
