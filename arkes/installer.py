"""The live installer's side of `os install --disk`: install the system the installer medium carries.

An image made by `os iso` boots a live system whose read-only root holds, at PAYLOAD, a sysroot where the system
was installed when the medium was made: its repository (the system's commit and its layers' commits), its
deployment (whose /etc/system is the Systemfile and its context) and the container storage with the base image and
the build cache. Installing from it needs no network and no build: the commit is pulled into the new disk's
repository and deployed there as `os install --disk` deploys a commit it built, and the build cache is copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import deploy, images, log, run
from arkes.errors import ArkesError, UsageError
from arkes.names import STATEROOT, layer_ref
from arkes.results import Outcome

if TYPE_CHECKING:
    from arkes.ostree import Deployment, Sysroot

PAYLOAD = Path("/usr/lib/arkes/installer/sysroot")
# Where the medium's ISO 9660 file system is mounted on the live system (by the initramfs's dmsquash-live).
MEDIUM = Path("/run/initramfs/live")
# Where it leaves the live root's read-only lower layer (the compressed file system) mounted.
ROOTFS_BASE = Path("/run/rootfsbase")
ANSWERS = "arkes/answers.toml"  # on the medium
ANSWERS_KARG = "arkes.answers"  # on the kernel command line: a path on the live system, or `none`
# Printed on the console when an unattended install fails: a person at the machine, or a test, looks for it.
FAILED = "The unattended installation failed"
DONE = "The unattended installation finished"


def payload() -> Path | None:
    """The installer's payload when this is the live installer, else None. It is read from the compressed root
    itself (which the initramfs leaves mounted at ROOTFS_BASE), not through the overlay: to an overlay, the
    whiteouts of the container storage's layers (character devices 0:0) in its lower layer hide their files."""
    override = os.environ.get("ARKES_INSTALLER_PAYLOAD")
    paths = [Path(override)] if override else [ROOTFS_BASE / PAYLOAD.relative_to("/"), PAYLOAD]
    return next((path for path in paths if (path / "ostree/repo").is_dir()), None)


def _state_dir(sysroot_path: Path) -> Path:
    return sysroot_path / "ostree/deploy" / STATEROOT / "var"


def install(
    root: Path,
    source: Path,
    install_kargs: list[str],
    *,
    mountpoints: tuple[str, ...] = (),
    customize: Callable[[Path], None] | None = None,
) -> Outcome:
    """Make `root` a sysroot holding the payload's system, deployed as the default with `install_kargs`."""
    from arkes.ostree import Sysroot

    carried = Sysroot.open(source, private_mounts=False)
    deployment = carried.default()
    if deployment is None:
        raise ArkesError(f"the installer's payload {source} holds no system", hint="make the medium again: `os iso`")
    allowed = {*mountpoints, "lost+found"}
    if any(child.name not in allowed for child in root.iterdir()):
        raise UsageError(f"{root} is not empty", hint="install into an empty directory")
    sysroot = Sysroot.initialize(root)
    layers = carried.layers()
    # The build cache is copied meanwhile: both copies mostly wait for the disks, and neither needs the other.
    cache = run.in_background(_copy_cache, source, root)
    try:
        _install(sysroot, carried, deployment, layers, install_kargs, customize)
    except BaseException:
        cache.exception()  # the copy ends before the disk is unmounted; the first failure is the one reported
        raise
    with log.step("copy the base image and the build cache"):
        cache.result()
    metadata = sysroot.commit(deployment.checksum).metadata
    return Outcome(deployment.checksum, metadata.version, deployed=True, up_to_date=False)


def _install(
    sysroot: Sysroot,
    carried: Sysroot,
    deployment: Deployment,
    layers: dict[str, str],
    install_kargs: list[str],
    customize: Callable[[Path], None] | None,
) -> None:
    with sysroot.lock():
        with log.step(f"copy the system ({len(layers)} layers) into the new repository"):
            # One pull of the commit and the layers' branches: the objects they share are copied once.
            run.run(
                [
                    "ostree",
                    f"--repo={sysroot.repo_path}",
                    "pull-local",
                    carried.repo_path,
                    deployment.checksum,
                    *sorted(layer_ref(digest) for digest in layers),
                ],
                what="ostree pull-local",
            )
        sysroot.reload()
        # The kernel arguments it was deployed with, without the ones OSTree adds per deployment.
        options = deployment.boot.options.split() if deployment.boot else []
        kargs = [k for k in options if not k.startswith("ostree=")]
        origin = {key: value for key, value in deployment.origin if key != deploy.ORIGIN_INSTALL_KARGS}
        system_dir = deployment.root / "etc/system"
        deploy.deploy_commit(
            sysroot,
            deployment.checksum,
            kargs,
            install_kargs,
            origin,
            system=(system_dir, system_dir / "Systemfile"),
            customize=customize,
        )


def _copy_cache(source: Path, root: Path) -> None:
    """Copy the payload's container storage (base image, build cache) and the gate's records into the new system."""
    carried, target = _state_dir(source), _state_dir(root)
    for relative in ("lib/containers/storage", os.fspath(images.CACHE.relative_to("/var") / images.CHECKS)):
        if not (carried / relative).exists():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        # cp keeps what the storage needs: owners, modes, xattrs, device nodes (whiteouts), hard links.
        run.run(["cp", "-a", carried / relative, target / relative], what="cp")


def answers_path(cmdline: str, medium: Path = MEDIUM) -> Path | None:
    """The answer file of an unattended install: `arkes.answers=PATH` on the kernel command line (`none`: no
    unattended install), else the medium's arkes/answers.toml when there is one."""
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == ANSWERS_KARG:
            return None if value in ("", "none") else Path(value)
    default = medium / ANSWERS
    return default if default.is_file() else None


def console(message: str) -> None:
    """Say it where a person at the machine sees it: the unit's output goes to the console and the journal."""
    log.info(message)


def eject() -> None:
    """Open the tray (or let go of the stick) the live system runs from, so that a reboot starts the new disk."""
    device = run.run(["findmnt", "-n", "-o", "SOURCE", os.fspath(MEDIUM)], check=False).stdout.strip()
    if device:
        run.run(["eject", device], check=False)


def finish(after: str) -> None:
    """Power off or reboot as the answers say; a reboot first lets go of the medium."""
    if after == "reboot":
        eject()
        run.run(["systemctl", "reboot"], what="systemctl reboot")
    else:
        run.run(["systemctl", "poweroff"], what="systemctl poweroff")


def require_payload() -> Path:
    found = payload()
    if found is None:
        raise UsageError(
            "`os install --unattended` runs on the live installer that `os iso` makes",
            hint="elsewhere, use `os install --disk PATH --answers FILE`",
        )
    return found
