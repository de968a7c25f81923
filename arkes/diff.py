"""`os diff`: what differs between two deployments (packages, files) and what the machine changed in /etc.

Packages come from the commits' metadata, files from OSTree's own comparison of the two commits, and the /etc
overlay from comparing a deployment's /etc with the image's defaults in its /usr/etc.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import run, tree
from arkes.errors import UsageError
from arkes.etc import overlay
from arkes.records import Deployment, Metadata
from arkes.results import Change
from arkes.target import Target

if TYPE_CHECKING:
    from arkes.ostree import Sysroot


def default_pair(sysroot: Sysroot) -> tuple[int, int]:
    """Booted against default on a booted system; otherwise the previous deployment (1) against the newest (0)."""
    deployments = sysroot.deployments()
    booted = sysroot.booted
    if booted is not None:
        index = next(i for i, d in enumerate(deployments) if d.same(booted))
        return index, 0
    if len(deployments) < 2:
        raise UsageError("there is only one deployment: name two indexes, or upgrade first")
    return 1, 0


def _deployment(sysroot: Sysroot, index: int) -> Deployment:
    deployments = sysroot.deployments()
    if not 0 <= index < len(deployments):
        raise UsageError(f"there is no deployment {index} (see `os status`)")
    return deployments[index]


def packages(sysroot: Sysroot, a: int, b: int) -> list[Change]:
    def metadata(index: int) -> Metadata:
        return sysroot.commit(_deployment(sysroot, index).checksum).metadata

    return package_changes(metadata(a), metadata(b))


def package_changes(old_metadata: Metadata, new_metadata: Metadata) -> list[Change]:
    """Packages added, removed or at another version between two commits (from their package lists); first, when
    the kernel that boots is another one, that change as such (Debian names each kernel update a new package)."""
    old, new = dict(old_metadata.packages), dict(new_metadata.packages)
    changes = []
    if old_metadata.kernel != new_metadata.kernel:
        changes.append(Change("kernel", "kernel", old_metadata.kernel, new_metadata.kernel))
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(Change("added", name, "", new[name]))
        elif name not in new:
            changes.append(Change("removed", name, old[name], ""))
        elif old[name] != new[name]:
            changes.append(Change("changed", name, old[name], new[name]))
    return changes


_KINDS = {"A": "added", "D": "removed", "M": "modified"}


def files(sysroot: Sysroot, a: int, b: int) -> list[Change]:
    old = _deployment(sysroot, a).checksum
    new = _deployment(sysroot, b).checksum
    output = run.run(["ostree", "diff", f"--repo={sysroot.repo_path}", old, new], what="ostree diff").stdout
    changes = []
    for line in output.splitlines():
        kind, _, path = line.partition(" ")
        if kind in _KINDS:
            changes.append(Change(_KINDS[kind], path.strip()))
    return changes


def etc(target: Target, index: int | None) -> list[Change]:
    """The local /etc overlay of a deployment: the running /etc for the booted one."""
    sysroot = target.sysroot
    if index is None:
        deployment = sysroot.booted or sysroot.default()
    else:
        deployment = _deployment(sysroot, index)
    if deployment is None:
        raise UsageError("there is no deployment")
    root = sysroot.deployment_dir(deployment)
    booted = sysroot.booted
    live = Path("/etc") if target.booted and deployment.same(booted) else root / "etc"
    return overlay(live, root / "usr/etc")


# --- /var: the machine's, seeded once ------------------------------------------------------------------------

Reader = Callable[[str], bytes | None]


def commit_reader(sysroot: Sysroot, checksum: str) -> Reader:
    """Read files of a commit without checking it out."""

    def read(path: str) -> bytes | None:
        data: bytes | None = sysroot.read_commit_file(checksum, path)
        return data

    return read


def seeded_files(read: Reader) -> list[tuple[str, str]]:
    """(/var path, factory path) of every file an image seeds into /var (its `C` lines in tree.TMPFILES)."""
    text = read(tree.TMPFILES)
    if text is None:
        return []
    seeded = []
    for line in text.decode(errors="replace").splitlines():
        if not line.startswith("C"):
            continue  # only copies seed files (and shlex takes a while over the thousands of other lines)
        try:
            fields = shlex.split(line, comments=True)
        except ValueError:
            continue
        if len(fields) >= 7 and fields[0] == "C" and fields[1].startswith("/var/"):
            # The argument is the rest of the line (tmpfiles.d(5)), spaces included.
            seeded.append((fields[1], " ".join(fields[6:]).lstrip("/")))
    return seeded


def _differs(machine: Path, content: bytes | None) -> bool:
    if content is None or machine.is_symlink() or not machine.is_file():
        return True
    try:
        return machine.read_bytes() != content
    except OSError:
        return True


def var_kept(var: Path, new: Reader, old: Reader | None = None) -> list[Change]:
    """/var paths where the image has content the machine does not take, because the machine has its own copy.

    With `old` (the image the machine runs now), only what the new image adds or changes is named: what an
    upgrade tells. Without it, every seeded file whose machine copy differs from the image's: `os diff --var`.
    """
    old_seeded = dict(seeded_files(old)) if old is not None else {}
    changes = []
    for path, factory in seeded_files(new):
        machine = var / path.removeprefix("/var/")
        if not os.path.lexists(machine):
            continue  # the next boot seeds it
        content = new(factory)
        if old is not None:
            before = old(old_seeded[path]) if path in old_seeded else None
            if before is not None and before == content:
                continue  # the image did not change it
        if _differs(machine, content):
            kind = "added" if old is not None and path not in old_seeded else "modified"
            changes.append(Change(kind, path, "machine's copy kept"))
    return changes


def var(target: Target, index: int | None) -> list[Change]:
    """`os diff --var`: the image's /var content that the machine's /var does not have (the machine's stays)."""
    sysroot = target.sysroot
    deployment = (sysroot.booted or sysroot.default()) if index is None else _deployment(sysroot, index)
    if deployment is None:
        raise UsageError("there is no deployment")
    root = sysroot.deployment_dir(deployment)

    def read(path: str) -> bytes | None:
        try:
            return (root / path).read_bytes()
        except OSError:
            return None

    return var_kept(target.var, read)
