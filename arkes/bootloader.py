"""The boot loader: GRUB for BIOS and UEFI from one menu, written by `os` from OSTree's deployments.

Debian's GRUB has no blscfg, and OSTree's own GRUB backend would run grub-mkconfig inside the new deployment; so
OSTree is told `sysroot.bootloader=none` and we write `/boot/grub/grub.cfg` ourselves, atomically, after every
change to the deployment list. Both firmware paths end in that one file: the BIOS core image (in the BIOS boot
partition) and the EFI binary (on the ESP, at the removable-media path) each find the boot partition by its UUID.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import boots, health, log, run
from arkes.errors import CommandError, ToolMissingError, UsageError
from arkes.health import Trial

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

MENU = Path("grub/grub.cfg")
GRUB_LIB = Path("/usr/lib/grub")
TIMEOUT = 3
# Modules built into the first stage: enough to find the boot partition and read the menu from it.
CORE_MODULES = ("part_gpt", "ext2", "search", "search_fs_uuid", "normal", "configfile", "serial", "terminal")
BIOS_MODULES = ("biosdisk", *CORE_MODULES)
EFI_MODULES = ("fat", *CORE_MODULES)

# Offsets in GRUB's i386-pc boot.img (the MBR code) and diskboot.img (first sector of core.img).
KERNEL_SECTOR = 0x5C
DRIVE_CHECK = 0x66
MBR_KEEP = slice(0x1B8, 0x200)  # disk signature, partition table, boot signature
BLOCKLIST = 0x200 - 12  # start (u64), length (u16), segment (u16) of the rest of core.img


@dataclass(frozen=True)
class MenuEntry:
    title: str
    linux: str
    initrd: str
    options: str
    id: str = ""  # the deployment's CHECKSUM.SERIAL
    checksum: str = ""
    booted: bool = False


def _quote(word: str) -> str:
    """GRUB's shell-like quoting: single quotes, with embedded single quotes closed and escaped."""
    return "'" + word.replace("'", "'\\''") + "'"


def render_menu(entries: list[MenuEntry], timeout: int = TIMEOUT, trial: Trial | None = None) -> str:
    """The whole grub.cfg: the serial console, the counting of the tries of a default on `trial`, then one entry
    per deployment in boot order, the first the default."""
    lines = [
        "# Written by `os` from the system's deployments, newest first; regenerated on every change.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set default=0",
        f"set timeout={timeout}",
        "set timeout_style=menu",
        "insmod part_gpt",
        "insmod ext2",
        "",
        *health.menu_preamble(trial),
    ]
    for index, entry in enumerate(entries):
        options = " ".join(_quote(o) if any(c in o for c in " ;$'\"\\{}|&<>") else o for o in entry.options.split())
        lines += [
            f"menuentry {_quote(entry.title)} --id arkes-{index} {{",
            f"    linux {entry.linux} {options}",
            f"    initrd {entry.initrd}",
            "}",
        ]
    if not entries:
        lines.append('echo "No Arkēs deployment to boot."')
    return "\n".join(lines) + "\n"


def entries(sysroot: Sysroot) -> list[MenuEntry]:
    result = []
    for index, deployment in enumerate(sysroot.deployments()):
        boot = deployment.boot
        # A staged deployment has no kernel in /boot until OSTree finalizes it at shutdown; the menu is written
        # again then (arkes-boot-menu.service).
        if boot is None or deployment.staged:
            continue
        commit = sysroot.commit(deployment.checksum)
        base = commit.metadata.base_image or "unknown base"
        result.append(
            MenuEntry(
                title=f"Arkēs {index}: {commit.version} ({base})",
                linux=boot.linux,
                initrd=boot.initrd,
                options=boot.options,
                id=f"{deployment.checksum}.{deployment.serial}",
                checksum=deployment.checksum,
                booted=deployment.same(sysroot.booted),
            )
        )
    return result


def trial(sysroot: Sysroot, listed: list[MenuEntry], env: dict[str, str]) -> Trial | None:
    """Whether the menu's default is on trial (see arkes.health), as this machine's /etc/system/boot.conf says."""
    from arkes.target import STATE_DIR, machine_etc, var_dir

    default = sysroot.default()
    etc = machine_etc(sysroot.path, sysroot.deployment_dir(default) if default is not None else None)
    tries = health.settings(etc).tries
    kept = boots.records(var_dir(sysroot.path) / STATE_DIR)
    return health.trial_for([(e.id, e.checksum, e.booted) for e in listed], env, kept, tries)


def atomic_write(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write through a temporary file in the same directory, synced, then renamed over the old one; `mode`, or
    the temporary file's 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_menu(sysroot: Sysroot) -> bool:
    """Regenerate the menu when this sysroot has a boot loader (its /boot/grub exists)."""
    path = sysroot.path / "boot" / MENU
    if not path.parent.is_dir():
        return False
    listed = entries(sysroot)
    try:
        on_trial = trial(sysroot, listed, boots.read_env(sysroot.path / "boot" / boots.ENV))
    except UsageError as e:
        log.warn(f"{e.message}; the new default boots without counted tries")
        on_trial = None
    # The tries first: a menu that counts them finds them.
    health.write_trial(sysroot.path / "boot", on_trial)
    atomic_write(path, render_menu(listed, trial=on_trial))
    log.debug(f"wrote {path}")
    return True


# --- installing GRUB ----------------------------------------------------------------------------------------


def _early_config(directory: Path, boot_uuid: str) -> Path:
    path = directory / "early.cfg"
    path.write_text(f"search --no-floppy --fs-uuid --set=root {boot_uuid}\nset prefix=($root)/grub\n")
    return path


def install_files(boot: Path, esp_device: Path, boot_uuid: str, work: Path) -> bytes:
    """Copy GRUB's modules to /boot/grub, put the EFI binary on the ESP; return the BIOS core image.

    The ESP is written with mtools, without mounting it: the installing kernel need not know FAT.
    """
    for platform in ("i386-pc", "x86_64-efi"):
        source = GRUB_LIB / platform
        if not source.is_dir():
            raise ToolMissingError(
                f"GRUB for {platform} is not installed", hint="apt-get install grub-pc-bin grub-efi-amd64-bin"
            )
        shutil.copytree(source, boot / "grub" / platform, dirs_exist_ok=True)
    early = _early_config(work, boot_uuid)
    efi = work / "BOOTX64.EFI"
    grub_mkimage: list[str | os.PathLike[str]] = ["grub-mkimage", "-c", early, "-p", "/grub"]
    run.run(
        [*grub_mkimage, "-O", "x86_64-efi", "-d", GRUB_LIB / "x86_64-efi", "-o", efi, *EFI_MODULES],
        what="grub-mkimage (UEFI)",
    )
    image = f"{esp_device}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run.run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"], env=env, what="mmd (ESP)")
    run.run(["mcopy", "-i", image, efi, "::/EFI/BOOT/BOOTX64.EFI"], env=env, what="mcopy (ESP)")
    core = work / "core.img"
    run.run(
        [*grub_mkimage, "-O", "i386-pc", "-d", GRUB_LIB / "i386-pc", "-o", core, *BIOS_MODULES],
        what="grub-mkimage (BIOS)",
    )
    return core.read_bytes()


def install_bios(disk: Path, core: bytes, partition_start: int, partition_sectors: int) -> None:
    """Write GRUB's MBR code and core image (into the BIOS boot partition at `partition_start`, in sectors).

    This is what grub-bios-setup does for an embedded core image, without the device probing it needs.
    """
    sectors = (len(core) + 511) // 512
    if sectors > partition_sectors:
        raise CommandError(f"GRUB's core image ({sectors} sectors) does not fit the BIOS boot partition")
    image = bytearray(core + b"\0" * (sectors * 512 - len(core)))
    # diskboot.img loads the rest of core.img from the block list at the end of its sector.
    segment = struct.unpack_from("<H", image, BLOCKLIST + 10)[0]
    struct.pack_into("<QHH", image, BLOCKLIST, partition_start + 1, sectors - 1, segment)
    boot = bytearray((GRUB_LIB / "i386-pc/boot.img").read_bytes())
    with open(disk, "r+b") as f:
        mbr = f.read(512)
        boot[MBR_KEEP] = mbr[MBR_KEEP]
        struct.pack_into("<Q", boot, KERNEL_SECTOR, partition_start)
        boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"  # trust the BIOS's boot drive: always a hard disk here
        f.seek(partition_start * 512)
        f.write(image)
        f.seek(0)
        f.write(boot)
        f.flush()
        os.fsync(f.fileno())
