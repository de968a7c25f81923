"""`os iso`: a live installer image that boots with BIOS and UEFI, from a CD or a USB stick, and installs offline.

The image holds, in order of what the firmware reads:

    boot/grub/grub.cfg        the menu (GRUB of this host, as `os install --disk` uses; grub-mkrescue makes the
                              El Torito images for BIOS and UEFI and the hybrid partition table for USB sticks)
    live/vmlinuz, initrd.img  the system's kernel and an initramfs that dracut (the system's own, in a container
                              of its image) made with dmsquash-live: it finds the medium by its label, mounts
                              LiveOS/squashfs.img read-only and an overlay in memory over it as the root
    LiveOS/squashfs.img       the live root: the system itself, as installed, plus the installer's payload at
                              /usr/lib/arkes/installer/sysroot (see arkes.installer)
    arkes/answers.toml        the answers of an unattended install (with --answers)

The live root is made by installing the system into a directory (the same build, commit and deploy as `os install`)
and hard-linking its deployment's files: the payload's repository and the live root share every file, and
mksquashfs stores each once (it finds the copies in the build cache too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from arkes import answers, deploy, diskimage, images, installer, log, podman, run
from arkes.errors import ArkesError, UsageError
from arkes.results import Iso

# The host programs that assemble the image; none of them is needed on the machines it installs.
PROGRAMS = ("mksquashfs", "xorriso", "grub-mkrescue", "mcopy")
GRUB_PLATFORMS = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}
# zstd at a middle level: a tenth larger than xz, built several times faster, and quick to read back on the
# installer (TCG guests here spend most of an install reading the live root).
SQUASHFS = ("-comp", "zstd", "-Xcompression-level", "9", "-b", "1M")
MENU_TIMEOUT = 5
AUTOLOGIN = (
    "[Service]\nExecStart=\nExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --noclear --autologin root {args} %I $TERM\n"
)
UNATTENDED_UNIT = """\
[Unit]
Description=Arkes unattended installation (from the answer file)
Documentation=file:/usr/share/doc/arkes/install.md
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/bin/os install --unattended
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""
WELCOME = """\

This is the Arkes installer: a live system, running from memory, that carries {version}.

  lsblk                                   the disks of this machine
  os install --disk                       install, asking which disk, a host name, passwords and a first user
  os install --disk /dev/XXX --wipe       install to that disk, erasing what it holds
  os install --disk --answers FILE        install from an answer file (see `os install --help`)

Installing needs no network. Power off with `systemctl poweroff`.

"""


def _check_tools() -> None:
    missing = sorted({run.PACKAGES[program] for program in PROGRAMS if shutil.which(program) is None})
    missing += [p for platform, p in GRUB_PLATFORMS.items() if not Path("/usr/lib/grub", platform).is_dir()]
    if missing:
        raise ArkesError(
            "`os iso` needs programs this machine lacks", hint=f"apt-get install {' '.join(sorted(set(missing)))}"
        )


def _write_new(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file of the live root without touching a file it may be a hard link of (the payload's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _live_root(live: Path, deployment_dir: Path, version: str, unattended: bool) -> None:
    """The live system: the deployment's tree (hard links), with a console that logs root in and says what to do."""
    run.run(["cp", "-a", "--link", f"{deployment_dir}/.", live], what="cp")
    etc = live / "etc"
    _write_new(etc / "hostname", "arkes-installer\n")
    units = etc / "systemd/system"
    _write_new(units / "getty@tty1.service.d/autologin.conf", AUTOLOGIN.format(args=""))
    serial = AUTOLOGIN.format(args="--keep-baud 115200,57600,38400,9600")
    _write_new(units / "serial-getty@.service.d/autologin.conf", serial)
    _write_new(etc / "motd", WELCOME.format(version=version))
    _write_new(units / "arkes-unattended.service", UNATTENDED_UNIT)
    if unattended:
        wants = units / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "arkes-unattended.service").symlink_to("../arkes-unattended.service")


def _kernel(live: Path) -> str:
    """The kernel version of the live root (the one its initramfs and vmlinuz sit beside)."""
    found = sorted(p.parent.name for p in (live / "usr/lib/modules").glob("*/vmlinuz"))
    if not found:
        raise ArkesError("the system has no kernel in /usr/lib/modules")
    return found[-1]


def _initramfs(image: str, kver: str, out: Path) -> None:
    """An initramfs for the live boot, made by the system's own dracut in a container of its image."""
    argv = ["dracut", "--quiet", "--force", "--no-hostonly", "--omit", "ostree", "--add", "dmsquash-live"]
    argv += ["--kver", kver, f"/out/{out.name}"]
    podman.run_in(image, argv, what="dracut", volumes=[(out.parent, "/out")], network=False)


def _menu(label: str, version: str, kargs: list[str], unattended: bool) -> str:
    live = f"root=live:CDLABEL={label} rd.live.image rd.live.overlay.overlayfs=1"
    line = f"{live} {' '.join(kargs)}".strip()
    entries = [(f"Install Arkes {version}" + (" unattended (answers on this medium)" if unattended else ""), line)]
    if unattended:
        entries.append((f"Arkes {version} installer, without the answer file", f"{line} {installer.ANSWERS_KARG}=none"))
    text = [
        "serial --unit=0 --speed=115200",
        "terminal_input console serial",
        "terminal_output console serial",
        f"set timeout={MENU_TIMEOUT}",
        "set default=0",
    ]
    for title, options in entries:
        text += [f'menuentry "{title}" {{', f"    linux /live/vmlinuz {options}", "    initrd /live/initrd.img", "}"]
    return "\n".join(text) + "\n"


def make(output: Path, systemfile: Path | None, answer_file: Path | None) -> Iso:
    """Build the system and write the installer image `output` (atomically: a failure leaves no file)."""
    given = answers.load(answer_file) if answer_file is not None else None
    _check_tools()
    output = output.absolute()
    if output.is_dir():
        raise UsageError(f"{output} is a directory", hint="name the image file to write, e.g. arkes.iso")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} does not exist")
    context = (systemfile or images.default_systemfile()).resolve().parent
    if output.resolve().is_relative_to(context):
        raise UsageError(
            f"{output} is inside the Systemfile's build context {context}, which is copied into the system",
            hint="write the image somewhere else",
        )
    # Beside the output: the staging tree is as large as the system (hard links need one filesystem).
    with tempfile.TemporaryDirectory(prefix=".arkes-iso-", dir=output.parent) as tmp:
        stage = Path(tmp)
        live, medium = stage / "live", stage / "medium"
        sysroot_path = live / installer.PAYLOAD.relative_to("/")
        try:
            outcome = deploy.install(sysroot_path, systemfile)
            diskimage.copy_images(sysroot_path, outcome.checksum)
            from arkes.ostree import Sysroot

            sysroot = Sysroot.open(sysroot_path, private_mounts=False)
            deployment = sysroot.default()
            assert deployment is not None
            with log.step("make the live root"):
                _live_root(live, deployment.root, outcome.version, given is not None)
            kver = _kernel(live)
            (medium / "live").mkdir(parents=True)
            shutil.copy2(live / "usr/lib/modules" / kver / "vmlinuz", medium / "live/vmlinuz")
            with log.step(f"make the live initramfs (dracut with dmsquash-live, kernel {kver})"):
                input_hash = sysroot.commit(outcome.checksum).metadata.input_hash
                tag = podman.build_tag(input_hash, sysroot.system_id(create=False))
                _initramfs(tag, kver, medium / "live/initrd.img")
            (medium / "LiveOS").mkdir()
            with log.step("compress the live root (mksquashfs)"):
                run.run(
                    ["mksquashfs", live, medium / "LiveOS/squashfs.img", "-noappend", "-no-progress", *SQUASHFS],
                    what="mksquashfs",
                )
            if answer_file is not None:
                (medium / "arkes").mkdir()
                shutil.copyfile(answer_file, medium / installer.ANSWERS)
            label = f"ARKES_{outcome.checksum[:10].upper()}"
            options = deployment.boot.options.split() if deployment.boot else []
            kargs = [k for k in options if not k.startswith(("ostree=", "root=")) and k not in ("rw", "ro")]
            (medium / "boot/grub").mkdir(parents=True)
            (medium / "boot/grub/grub.cfg").write_text(_menu(label, outcome.version, kargs, given is not None))
            partial = output.with_name(f".{output.name}.partial")
            with log.step("write the image (grub-mkrescue, BIOS and UEFI)"):
                try:
                    run.run(
                        ["grub-mkrescue", "-o", partial, medium, "--", "-volid", label],
                        what="grub-mkrescue",
                    )
                    os.replace(partial, output)
                except BaseException:
                    partial.unlink(missing_ok=True)
                    raise
        finally:
            deploy.remove_sysroot(sysroot_path)
    return Iso(
        path=str(output),
        bytes=output.stat().st_size,
        checksum=outcome.checksum,
        version=outcome.version,
        label=label,
        unattended=given is not None,
    )
