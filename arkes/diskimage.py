"""Install to a disk: partition (GPT), format, install the system as `os install` does, boot loader, fstab.

Layout: a BIOS boot partition (GRUB's core image), an EFI system partition, /boot (kernels, initramfs, the menu),
and the root filesystem (the OSTree sysroot) in the rest. Every partition is reached through its own loop device
with an offset, so nothing depends on the kernel parsing the partition table or on udev. Loop devices and mounts
are always released, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from arkes import bootloader, deploy, images, installer, log, podman, results, run
from arkes import systemfile as systemfile_module
from arkes.errors import UsageError

SECTOR = 512
MIB = 1024 * 1024
DEFAULT_SIZE = "10G"

# (name, size in MiB or None for the rest, GPT type)
PARTITIONS = (
    ("bios", 1, "21686148-6449-6E6F-744E-656564454649"),
    ("esp", 256, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("boot", 1024, "BC13C2FF-59E6-4262-A352-B275FD6F7172"),
    ("root", None, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
)


@dataclass(frozen=True)
class Partition:
    name: str
    start: int  # sectors
    sectors: int


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"cannot read the size {text!r}", hint="write it like 10G, 8192M or 20000000000")
    factor = {"": 1, "K": 1024, "M": MIB, "G": 1024**3, "T": 1024**4}[match.group(2).upper()]
    return int(match.group(1)) * factor


def partition_script() -> str:
    lines = ["label: gpt"]
    for name, size, guid in PARTITIONS:
        size_field = f", size={size}MiB" if size else ""
        lines.append(f"name={name}{size_field}, type={guid}")
    return "\n".join(lines) + "\n"


def read_partitions(disk: Path) -> dict[str, Partition]:
    table = json.loads(run.run(["sfdisk", "--json", disk], what="sfdisk --json").stdout)["partitiontable"]
    return {p["name"]: Partition(p["name"], int(p["start"]), int(p["size"])) for p in table["partitions"]}


@contextmanager
def loop_device(disk: Path, part: Partition) -> Iterator[Path]:
    device = run.run(
        [
            "losetup",
            "--find",
            "--show",
            "--offset",
            str(part.start * SECTOR),
            "--sizelimit",
            str(part.sectors * SECTOR),
            disk,
        ],
        what="losetup",
    ).stdout.strip()
    try:
        yield Path(device)
    finally:
        run.run(["losetup", "--detach", device], check=False)


@contextmanager
def mounted(device: Path, target: Path, *options: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run.run(["mount", *options, device, target], what=f"mount {target}")
    try:
        yield target
    finally:
        if run.run(["umount", target], check=False).returncode != 0:
            run.run(["umount", "--lazy", target], check=False)


def _fstab(boot_uuid: str, esp_uuid: str) -> str:
    return (
        "# Made by `os install --disk`. The root filesystem is mounted by the initramfs (root= on the kernel\n"
        "# command line); OSTree binds the deployment, /var and /sysroot from it.\n"
        f"UUID={boot_uuid}  /boot      ext4  defaults            0 2\n"
        f"UUID={esp_uuid}  /boot/efi  vfat  umask=0077,nofail   0 2\n"
    )


def password_hash(password: str) -> str:
    """A SHA-512 crypt(5) hash of `password`, as /etc/shadow keeps it."""
    hashed = run.run(["openssl", "passwd", "-6", "-stdin"], input=password.encode(), what="openssl passwd").stdout
    return hashed.strip()


@dataclass(frozen=True)
class Person:
    """The first person of an installed machine: a login, its password's hash, groups, SSH keys."""

    name: str
    password_hash: str
    groups: tuple[str, ...] = ("sudo",)
    ssh_authorized_keys: tuple[str, ...] = ()


def _set_root_password(etc: Path, password: str | None, *, hashed: str | None = None) -> None:
    """Set root's password hash in the deployment's /etc/shadow; None leaves root without one (test images)."""
    if hashed is None:
        hashed = "" if password is None else password_hash(password)
    shadow = etc / "shadow"
    lines = shadow.read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = hashed
            lines[i] = ":".join(fields)
    mode = shadow.stat().st_mode
    shadow.write_text("\n".join(lines) + "\n")
    os.chmod(shadow, stat.S_IMODE(mode))


def _set_hostname(etc: Path, name: str) -> None:
    """The machine's own name: /etc/hostname, and the name of 127.0.1.1 in /etc/hosts, as Debian's installer does."""
    (etc / "hostname").write_text(name + "\n")
    hosts = etc / "hosts"
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    short = name.split(".")[0]
    entry = f"127.0.1.1\t{name}" + (f"\t{short}" if short != name else "")
    lines = [entry if line.split()[:1] == ["127.0.1.1"] else line for line in lines]
    if entry not in lines:
        lines.insert(1, entry)
    hosts.write_text("\n".join(lines) + "\n")


def _add_person(deployment_dir: Path, var: Path, person: Person) -> None:
    """Make the first person in the deployment's /etc (the image's useradd rules, from its /etc/login.defs), with
    a home /home/NAME, kept in the stateroot's /var/home (/home links there on the machine), filled from /etc/skel."""
    etc = deployment_dir / "etc"
    groups = {line.split(":")[0] for line in (etc / "group").read_text().splitlines() if line}
    wanted = [g for g in person.groups if g in groups]
    for missing in sorted(set(person.groups) - groups):
        log.warn(f"the system has no group {missing!r}: {person.name} is not added to it")
    argv = ["useradd", "--prefix", str(deployment_dir), "--user-group", "--shell", "/bin/bash"]
    argv += ["--home-dir", f"/home/{person.name}", "--password", person.password_hash]
    if wanted:
        argv += ["--groups", ",".join(wanted)]
    run.run([*argv, person.name], what="useradd")
    entry = next(
        line.split(":") for line in (etc / "passwd").read_text().splitlines() if line.split(":")[0] == person.name
    )
    uid, gid = int(entry[2]), int(entry[3])
    home = var / "home" / person.name
    home.parent.mkdir(parents=True, exist_ok=True)
    skel = etc / "skel"
    if skel.is_dir():
        shutil.copytree(skel, home, symlinks=True)
    else:
        home.mkdir()
    if person.ssh_authorized_keys:
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text("".join(key.strip() + "\n" for key in person.ssh_authorized_keys))
        (ssh / "authorized_keys").chmod(0o600)
    for path in [home, *home.rglob("*")]:
        os.lchown(path, uid, gid)
    home.chmod(0o700)


def copy_images(root: Path, checksum: str) -> None:
    """Put the base image and the build cache of the installed system into the target's container storage: the
    image it was built from and the image of each of its build steps (Buildah finds its cached layers there), so
    the installed system rebuilds offline, and its first upgrade runs only the steps that changed."""
    from arkes.ostree import Sysroot

    sysroot = Sysroot.open(root)
    tag = podman.build_tag(sysroot.commit(checksum).metadata.input_hash, sysroot.system_id(create=False))
    steps = podman.parents(tag, until=images.BASE) if podman.image_exists(tag) else []
    storage = root / "ostree/deploy" / "arkes" / "var/lib/containers/storage"
    storage.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="arkes-runroot-") as runroot:
        store = f"containers-storage:[overlay@{storage}+{runroot}]"
        with log.step(f"copy {images.BASE} and the build cache into the target's container storage") as progress:
            run.run(["podman", "push", "--quiet", images.BASE, store + images.BASE], what="podman push")
            # Bottom first: each step's layers are there when the next one is copied.
            for i, image_id in enumerate(reversed(steps)):
                progress.update((i + 1) / (len(steps) + 1), f"build step {i + 1}/{len(steps)}")
                run.run(["podman", "push", "--quiet", image_id, f"{store}@{image_id}"], what="podman push")
            if steps:
                run.run(["podman", "push", "--quiet", tag, store + tag], what="podman push")
    # The storage's overlay driver leaves its directory bind-mounted on itself (on the same filesystem, which
    # os.path.ismount cannot tell): the target must be unmountable and removable.
    run.run(["umount", storage / "overlay"], check=False)
    # What the gate read from the image's initramfs, by its content: the first upgrade need not unpack it again.
    checks = images.checks_dir()
    if checks.is_dir():
        installed = root / "ostree/deploy/arkes/var" / images.CACHE.relative_to("/var") / images.CHECKS
        shutil.copytree(checks, installed, dirs_exist_ok=True)


def _is_block_device(path: Path) -> bool:
    return path.exists() and stat.S_ISBLK(path.stat().st_mode)


def install_disk(
    disk: Path,
    *,
    size: str = DEFAULT_SIZE,
    systemfile: Path | None = None,
    root_password: str | None,
    root_password_hash: str | None = None,
    hostname: str | None = None,
    person: Person | None = None,
    wipe: bool = False,
    secrets: Mapping[str, Path] | None = None,
    allow_secrets: Collection[str] = (),
    payload: Path | None = None,
) -> results.Outcome:
    """Partition, format and install the system onto a disk image (created sparse) or a block device: the
    machine gets `hostname` (else the Systemfile's), root's password (or its hash) and the first `person`.
    With `payload` (the live installer's, see arkes.installer) the system it carries is installed, unbuilt."""
    if payload is None:
        # A Systemfile with errors is refused before the disk is touched.
        context = (systemfile or images.default_systemfile()).resolve().parent
        systemfile_module.load(systemfile or images.default_systemfile())
        if disk.resolve().is_relative_to(context):
            raise UsageError(
                f"{disk} is inside the Systemfile's build context {context}, which is copied into the system",
                hint="put the disk image somewhere else",
            )
    block = _is_block_device(disk)
    if block:
        from arkes import disks

        # A whole, writable disk that is not the running system's; one that holds partitions only with --wipe.
        disks.choose(disks.candidates(disks.listing(), loops=True), str(disk), wipe=wipe)
    elif disk.exists() and not wipe:
        raise UsageError(
            f"{disk} is an existing file; installing erases it",
            hint="give --wipe to erase it, or name a new image file",
        )
    created = not disk.exists()
    try:
        if not block:
            disk.parent.mkdir(parents=True, exist_ok=True)
            with open(disk, "wb") as f:
                f.truncate(parse_size(size))
        run.run(["sfdisk", "--quiet", "--wipe", "always", disk], input=partition_script().encode(), what="sfdisk")
        machine = _Machine(root_password, root_password_hash, hostname, person)
        return _install_partitions(disk, systemfile, machine, secrets, allow_secrets, payload)
    except BaseException:
        if created:
            disk.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Machine:
    root_password: str | None
    root_password_hash: str | None
    hostname: str | None
    person: Person | None


def _install_partitions(
    disk: Path,
    systemfile: Path | None,
    machine: _Machine,
    secrets: Mapping[str, Path] | None,
    allow_secrets: Collection[str],
    payload: Path | None,
) -> results.Outcome:
    parts = read_partitions(disk)
    uuids = {name: str(uuid.uuid4()) for name in ("boot", "root")}
    esp_id = uuid.uuid4().hex[:8].upper()
    esp_uuid = f"{esp_id[:4]}-{esp_id[4:]}"
    # The scratch directory holds the mount points: it must outlive every mount (exit order is reversed).
    with tempfile.TemporaryDirectory(prefix="arkes-disk-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        devices = {name: stack.enter_context(loop_device(disk, parts[name])) for name in ("esp", "boot", "root")}
        with log.step("format"):
            run.run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", esp_id, devices["esp"]], what="mkfs.vfat")
            run.run(["mkfs.ext4", "-q", "-F", "-L", "arkes-boot", "-U", uuids["boot"], devices["boot"]], what="mkfs")
            run.run(["mkfs.ext4", "-q", "-F", "-L", "arkes-root", "-U", uuids["root"], devices["root"]], what="mkfs")
        root = stack.enter_context(mounted(devices["root"], work / "root"))
        boot = stack.enter_context(mounted(devices["boot"], root / "boot"))
        (boot / "efi").mkdir()
        with log.step("install GRUB for BIOS and UEFI"):
            core = bootloader.install_files(boot, devices["esp"], uuids["boot"], work)
            bootloader.install_bios(disk, core, parts["bios"].start, parts["bios"].sectors)

        def customize(deployment_dir: Path) -> None:
            etc = deployment_dir / "etc"
            (etc / "fstab").write_text(_fstab(uuids["boot"], esp_uuid))
            _set_root_password(etc, machine.root_password, hashed=machine.root_password_hash)
            if machine.hostname:
                _set_hostname(etc, machine.hostname)
            if machine.person:
                _add_person(deployment_dir, root / "ostree/deploy/arkes/var", machine.person)

        install_kargs = [f"root=UUID={uuids['root']}", "rw"]
        if payload is not None:
            outcome = installer.install(root, payload, install_kargs, mountpoints=("boot",), customize=customize)
        else:
            outcome = deploy.install(
                root,
                systemfile,
                install_kargs,
                mountpoints=("boot",),
                customize=customize,
                secrets=secrets,
                allow_secrets=allow_secrets,
            )
            copy_images(root, outcome.checksum)
        with log.step("sync"):
            os.sync()
        return outcome
