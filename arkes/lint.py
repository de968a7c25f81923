"""The bootability gate: named checks on a rewritten tree, run before anything is committed.

Every check runs and every failure is reported, so one build shows everything that stands between an image and a
booting system.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from arkes import bootloader, run, tree
from arkes.errors import LintError, SecretError

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


def _initramfs(root: Path, cache: Path | None = None) -> str | None:
    found = tree.kernels(root)
    failures = []
    for kernel in found:
        if not kernel.initramfs.is_file():
            failures.append(
                f"no initramfs for kernel {kernel.version} (/usr/lib/modules/{kernel.version}/initramfs.img)"
            )
            continue
        if not has_ostree_module(kernel.initramfs, cache):
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


def failures(root: Path, cache: Path | None = None) -> list[str]:
    """Every check's failure. `cache`: a directory that keeps what was read from an initramfs, by its content."""
    checks: dict[str, Callable[[Path], str | None]] = {
        **CHECKS,
        "initramfs": functools.partial(_initramfs, cache=cache),
    }
    return [f"{name}: {message}" for name, check in checks.items() if (message := check(root))]


def check(
    root: Path,
    allowed_secrets: Collection[str] = (),
    cache: Path | None = None,
    keys: Collection[PrivateKey] = (),
) -> list[str]:
    """The bootability checks, then the scan for private keys; return the keys `allowed_secrets` let through.
    `keys`: those found already where `root` holds no files (directories a checkout of layers left empty)."""
    found = failures(root, cache)
    if found:
        raise LintError(found)
    every = sorted([*private_keys(root), *keys], key=lambda k: k.path)
    keys = [k for k in every if k.path not in allowed_secrets]
    if keys:
        raise SecretError(
            [f"{k.path} ({k.kind})" for k in keys],
            hint="an image is shared by every machine made from it (and anyone who can read its repository): "
            "give each machine its secret at run time instead, as a file in its /etc (put there once, every "
            "upgrade keeps it) or a systemd credential (LoadCredential= in the unit); to ship one on purpose, "
            + " ".join(f"--allow-secret {k.path}" for k in keys),
        )
    return [k.path for k in every]


# --- private keys ----------------------------------------------------------------------------------------------

# PEM blocks (PKCS#1, PKCS#8, SEC1, encrypted PKCS#8, OpenSSH's own format) and OpenPGP secret key blocks.
_PRIVATE_KEY = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# A key file is small; the largest PEM bundles of certificates and a key stay far below this.
_SCAN_LIMIT = 256 * 1024
# Trees that hold no configuration: kernel modules, firmware, translations, the package database.
_NOT_SCANNED = ("usr/lib/modules", "usr/lib/firmware", "usr/share/locale", "usr/lib/sysimage")
# Where packages keep test data and examples (in /usr only): such keys are published with their sources.
_TEST_DATA = re.compile(r"^usr/(?!etc/)(share/doc/|(.*/)?(tests?|testdata|test_data|testing|examples?)/)")
# Where the rewrite moved a path: shown as the image had it, the path a Systemfile COPYs to.
_MOVED = (("usr/etc/", "etc/"), (tree.FACTORY + "/var/", "var/"))


@dataclass(frozen=True)
class PrivateKey:
    path: str  # as the image had it: /etc/..., /var/...
    kind: str  # what the block says it is: "RSA PRIVATE KEY", "OPENSSH PRIVATE KEY", ...


def image_path(relative: str) -> str:
    for moved, original in _MOVED:
        if relative.startswith(moved):
            return "/" + original + relative.removeprefix(moved)
    return "/" + relative


def private_keys(root: Path) -> list[PrivateKey]:
    """Every regular file of a rewritten tree that holds private key material, outside test data and examples."""
    found = []
    for directory, dirs, names in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        relative_dir = "" if relative_dir == "." else relative_dir + "/"
        dirs[:] = [d for d in dirs if not (relative_dir + d + "/").startswith(_NOT_SCANNED)]
        for name in names:
            relative = relative_dir + name
            if _TEST_DATA.match(relative):
                continue
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode) or info.st_size > _SCAN_LIMIT or info.st_size < 64:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if b"PRIVATE KEY" in data and (match := _PRIVATE_KEY.search(data)):
                found.append(PrivateKey(image_path(relative), match.group(1).decode().lower()))
    return sorted(found, key=lambda k: k.path)


_KEYS_HEADER = "private keys in this layer (arkes)"


def layer_keys(diff: Path, digest: str, cache: Path | None = None) -> list[PrivateKey]:
    """The private keys in an image layer (its directory in container storage), as private_keys finds them in a
    tree. A layer never changes: with a `cache` directory each layer is read once, its answer kept by digest."""
    known = cache / f"keys-{digest.removeprefix('sha256:')}" if cache is not None else None
    if known is not None and known.is_file():
        lines = known.read_text(errors="replace").splitlines()
        rows = [line.split("\t") for line in lines[1:]]
        if lines[:1] == [_KEYS_HEADER] and all(len(row) == 2 for row in rows):
            return [PrivateKey(path, kind) for path, kind in rows]
    found = private_keys(diff)
    if known is not None:
        try:
            known.parent.mkdir(parents=True, exist_ok=True)
            bootloader.atomic_write(
                known, "".join(f"{line}\n" for line in [_KEYS_HEADER, *(f"{k.path}\t{k.kind}" for k in found)])
            )
        except OSError:
            pass  # a cache that cannot be written only costs the next build the same reading
    return found


# --- reading an initramfs -----------------------------------------------------------------------------------


def has_ostree_module(path: Path, cache: Path | None = None) -> bool:
    """Whether the initramfs at `path` holds the ostree dracut module. Unpacking one takes a good part of a second
    and most builds keep the kernel's, so with a `cache` directory the answer is kept under the file's SHA-256."""
    data = path.read_bytes()
    known = cache / f"initramfs-{hashlib.sha256(data).hexdigest()}" if cache is not None else None
    if known is not None and known.is_file():
        return known.read_text().strip() == "ostree"
    names = initramfs_names(path, data)
    found = any(marker in names for marker in OSTREE_MARKERS)
    if known is not None:
        try:
            known.parent.mkdir(parents=True, exist_ok=True)
            bootloader.atomic_write(known, "ostree\n" if found else "none\n")
        except OSError:
            pass  # a cache that cannot be written only costs the next build the same unpacking
    return found


def initramfs_names(path: Path, data: bytes | None = None) -> set[str]:
    """Every member name of an initramfs: uncompressed cpio segments (early microcode) then a compressed one."""
    data = path.read_bytes() if data is None else data
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
