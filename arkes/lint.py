"""The bootability gate: named checks on a rewritten tree, run before anything is committed.

Every check runs and every failure is reported, so one build shows everything that stands between an image and a
booting system.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

from arkes import run, tree
from arkes.errors import LintError

# A file only the ostree dracut module puts into an initramfs: the program that mounts the deployment.
OSTREE_MARKERS = ("usr/lib/ostree/ostree-prepare-root", "usr/lib/systemd/system/ostree-prepare-root.service")


def _kernel(root: Path) -> str | None:
    found = tree.kernels(root)
    if not found:
        return "no kernel: /usr/lib/modules/*/vmlinuz is missing (install linux-image-amd64)"
    if len(found) > 1:
        # post_build chooses one kernel, unless the image has two flavours and declares neither.
        names = " and ".join(k.version for k in found)
        flavour = found[-1].version.split("-", 1)[-1].removesuffix("-amd64") or found[-1].version
        return (
            f"more than one kernel would boot: {names}; choose one with `RUN set_kernel FLAVOUR` before "
            f"`RUN post_build` (e.g. `set_kernel {flavour}`, or an exact version), or remove the other"
        )
    return None


def _initramfs(root: Path) -> str | None:
    found = tree.kernels(root)
    failures = []
    for kernel in found:
        if not kernel.initramfs.is_file():
            failures.append(
                f"no initramfs for kernel {kernel.version} (/usr/lib/modules/{kernel.version}/initramfs.img)"
            )
            continue
        names = initramfs_names(kernel.initramfs)
        if not any(marker in names for marker in OSTREE_MARKERS):
            failures.append(
                f"the initramfs of kernel {kernel.version} lacks the ostree dracut module "
                "(rebuild it with `dracut --no-hostonly --add ostree`, which `post_build` does)"
            )
    return "; ".join(failures) or None


def _os_release(root: Path) -> str | None:
    if not tree.os_release(root):
        return "no os-release (/usr/lib/os-release)"
    return None


def _systemd(root: Path) -> str | None:
    if not (root / "usr/lib/systemd/systemd").is_file():
        return "no systemd (/usr/lib/systemd/systemd is missing)"
    init = root / "usr/sbin/init"
    if not (init.exists() or init.is_symlink()):
        return "no /usr/sbin/init (install systemd-sysv)"
    return None


def _etc(root: Path) -> str | None:
    if not (root / "usr/etc").is_dir():
        return "no /usr/etc: the image's default configuration is missing"
    if (root / "etc").exists():
        return "/etc still exists beside /usr/etc"
    return None


CHECKS: dict[str, Callable[[Path], str | None]] = {
    "kernel": _kernel,
    "initramfs": _initramfs,
    "os-release": _os_release,
    "systemd": _systemd,
    "usr-etc": _etc,
}


def failures(root: Path) -> list[str]:
    return [f"{name}: {message}" for name, check in CHECKS.items() if (message := check(root))]


def check(root: Path) -> None:
    found = failures(root)
    if found:
        raise LintError(found)


# --- reading an initramfs -----------------------------------------------------------------------------------


def initramfs_names(path: Path) -> set[str]:
    """Every member name of an initramfs: uncompressed cpio segments (early microcode) then a compressed one."""
    data = path.read_bytes()
    names: set[str] = set()
    offset = 0
    while offset < len(data):
        if data[offset : offset + 6] in (b"070701", b"070702"):
            offset = _cpio_names(data, offset, names)
            continue
        if data[offset : offset + 1] == b"\0":
            offset += 1  # padding between segments
            continue
        names |= _cpio_all(_decompress(data[offset:]))
        break
    return names


def _decompress(data: bytes) -> bytes:
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"\xfd7zXZ"):
        return lzma.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return run.output_bytes(["zstd", "-dc"], input=data, what="zstd")
    return b""


def _cpio_all(data: bytes) -> set[str]:
    names: set[str] = set()
    offset = 0
    while offset < len(data) and data[offset : offset + 6] in (b"070701", b"070702"):
        offset = _cpio_names(data, offset, names)
        while offset < len(data) and data[offset : offset + 1] == b"\0":
            offset += 1
    return names


def _cpio_names(data: bytes, offset: int, names: set[str]) -> int:
    """Read one cpio (newc) archive starting at offset; add its names; return the offset after its trailer."""
    while True:
        header = data[offset : offset + 110]
        if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
            return len(data)
        filesize = int(header[54:62], 16)
        namesize = int(header[94:102], 16)
        name = data[offset + 110 : offset + 110 + namesize - 1].decode("utf-8", "replace")
        offset = _align(offset + 110 + namesize)
        offset = _align(offset + filesize)
        if name == "TRAILER!!!":
            return offset
        names.add(name.lstrip("./").lstrip("/") if name not in (".", "./") else ".")


def _align(n: int) -> int:
    return (n + 3) & ~3
