"""The bootability gate on synthetic trees, and reading member names out of an initramfs."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from arkes import lint
from arkes.errors import LintError


def cpio(names: list[str]) -> bytes:
    """A cpio (newc) archive of empty files."""
    out = b""

    def entry(name: str) -> bytes:
        raw = name.encode() + b"\0"
        header = "070701" + "".join(f"{v:08X}" for v in (1, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0))
        data = header.encode() + raw
        return data + b"\0" * (-len(data) % 4)

    for name in [*names, "TRAILER!!!"]:
        out += entry(name)
    return out


def bootable(root: Path, initramfs: bytes) -> Path:
    moddir = root / "usr/lib/modules/6.1.0-test"
    moddir.mkdir(parents=True)
    (moddir / "vmlinuz").write_bytes(b"kernel")
    (moddir / "initramfs.img").write_bytes(initramfs)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd").write_bytes(b"")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/init").symlink_to("../lib/systemd/systemd")
    (root / "usr/lib/os-release").write_text("ID=arkes\n")
    (root / "usr/etc").mkdir()
    return root


OSTREE_INITRAMFS = ["usr", "usr/lib/ostree/ostree-prepare-root", "init"]


def test_reads_names_behind_an_early_cpio(tmp_path: Path) -> None:
    path = tmp_path / "initramfs.img"
    path.write_bytes(cpio(["kernel/x86/microcode/GenuineIntel.bin"]) + gzip.compress(cpio(OSTREE_INITRAMFS)))
    names = lint.initramfs_names(path)
    assert "usr/lib/ostree/ostree-prepare-root" in names
    assert "kernel/x86/microcode/GenuineIntel.bin" in names


def test_reads_xz_initramfs(tmp_path: Path) -> None:
    path = tmp_path / "initramfs.img"
    path.write_bytes(lzma.compress(cpio(OSTREE_INITRAMFS), format=lzma.FORMAT_XZ))
    assert "init" in lint.initramfs_names(path)


def test_a_bootable_tree_passes(tmp_path: Path) -> None:
    root = bootable(tmp_path, gzip.compress(cpio(OSTREE_INITRAMFS)))
    assert lint.failures(root) == []
    lint.check(root)


def test_initramfs_without_ostree_is_refused(tmp_path: Path) -> None:
    root = bootable(tmp_path, gzip.compress(cpio(["init", "usr/bin/sh"])))
    failures = lint.failures(root)
    assert len(failures) == 1
    assert failures[0].startswith("initramfs:") and "ostree dracut module" in failures[0]


def test_every_failure_is_listed(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    (tmp_path / "etc").mkdir()
    with pytest.raises(LintError) as caught:
        lint.check(tmp_path)
    names = [f.split(":")[0] for f in caught.value.failures]
    assert names == ["kernel", "os-release", "systemd", "usr-etc"]
    assert "not bootable" in caught.value.message


def test_missing_initramfs_is_named(tmp_path: Path) -> None:
    root = bootable(tmp_path, b"")
    (root / "usr/lib/modules/6.1.0-test/initramfs.img").unlink()
    assert lint.failures(root) == [
        "initramfs: no initramfs for kernel 6.1.0-test (/usr/lib/modules/6.1.0-test/initramfs.img)"
    ]


def test_two_kernels_are_refused_with_both_names_and_how_to_choose(tmp_path: Path) -> None:
    root = bootable(tmp_path, gzip.compress(cpio(OSTREE_INITRAMFS)))
    rt = root / "usr/lib/modules/6.12.118+deb13-rt-amd64"
    rt.mkdir()
    (rt / "vmlinuz").write_bytes(b"kernel")
    (rt / "initramfs.img").write_bytes(gzip.compress(cpio(OSTREE_INITRAMFS)))
    with pytest.raises(LintError) as caught:
        lint.check(root)
    message = str(caught.value)
    assert "6.1.0-test and 6.12.118+deb13-rt-amd64" in message
    assert "set_kernel rt" in message
