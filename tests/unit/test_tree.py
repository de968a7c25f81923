"""The rewrite into the OSTree layout, on small synthetic trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from arkes import tree
from arkes.errors import ArkesError

DPKG_STATUS = """\
Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9
Description: GNU C Library
 continued line: not a field
"""


def make_image(root: Path) -> Path:
    for d in ("usr/bin", "usr/lib/modules/6.1.0-test", "usr/lib/tmpfiles.d", "etc/system", "boot", "tmp", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "sbin").mkdir()
    (root / "sbin/legacy-tool").write_text("#!/bin/sh\n")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/hostname").write_text("")
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    (root / "etc/system/Systemfile").write_text("FROM x\n")
    (root / "boot/vmlinuz-6.1.0-test").write_bytes(b"kernel")
    (root / "boot/initrd.img-6.1.0-test").write_bytes(b"initrd")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "var/lib/app").mkdir(parents=True)
    (root / "var/lib/app/state").write_text("seed")
    os.chmod(root / "var/lib/app", 0o750)
    (root / "var/cache/apt").mkdir(parents=True)
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"cache")
    (root / "var/log").mkdir()
    (root / "var/log/dpkg.log").write_text("log")
    (root / "var/log/journal").mkdir()
    os.chmod(root / "var/log/journal", 0o2755)
    (root / "var/lib/apt").mkdir(parents=True)
    (root / "var/lib/apt/extended_states").write_text("Package: libfoo\nAuto-Installed: 1\n")
    (root / "var/run").symlink_to("/run")
    (root / "var/tmp").mkdir()
    (root / "usr/lib/tmpfiles.d/var.conf").write_text(
        "d /var/log 0755 - - -\nq /var/tmp 1777 root root 30d\nh /var/log/journal - - - - +C\n"
    )
    (root / "home/alice").mkdir(parents=True)
    (root / "home/alice/notes").write_text("hi")
    (root / "root").mkdir()
    (root / "opt").mkdir()
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "tmp/junk").write_text("x")
    (root / "usr/lib/arkes/kargs.d").mkdir(parents=True)
    (root / "usr/lib/arkes/kargs.d/10-a.conf").write_text("console=ttyS0  # serial\n# nothing\nquiet\n")
    (root / "usr/lib/arkes/kargs.d/20-b.conf").write_text("rd.debug\n")
    (root / "usr/lib/os-release").write_text('NAME="Arkēs"\nID=arkes\n')
    return root


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = make_image(tmp_path / "root")
    tree.rewrite(root)
    return root


def tmpfiles(root: Path) -> list[str]:
    return (root / tree.TMPFILES).read_text().splitlines()


def test_etc_moves_to_usr_etc(image: Path) -> None:
    assert not (image / "etc").exists()
    assert (image / "usr/etc/system/Systemfile").read_text() == "FROM x\n"
    assert (image / "usr/etc/machine-id").read_text() == ""


def test_runtime_files_become_the_systems(tmp_path: Path) -> None:
    root = make_image(tmp_path / "root")
    (root / "etc/hostname").write_text("build-host\n")
    (root / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    (root / "usr/lib/arkes/hostname").write_text("web1\n")
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/systemd-resolved").write_bytes(b"")
    tree.rewrite(root)
    assert (root / "usr/etc/hostname").read_text() == "web1\n"
    assert "127.0.0.1\tlocalhost web1" in (root / "usr/etc/hosts").read_text()
    assert os.readlink(root / "usr/etc/resolv.conf") == tree.RESOLVED_STUB


def test_build_hosts_name_is_not_kept(image: Path) -> None:
    assert not (image / "usr/etc/hostname").exists()
    assert not (image / "usr/etc/resolv.conf").exists(), "no resolver: the build host's is never shipped"


def test_kernel_and_initramfs_move_beside_modules(image: Path) -> None:
    moddir = image / "usr/lib/modules/6.1.0-test"
    assert (moddir / "vmlinuz").read_bytes() == b"kernel"
    assert (moddir / "initramfs.img").read_bytes() == b"initrd"
    assert list((image / "boot").iterdir()) == []
    assert [k.version for k in tree.kernels(image)] == ["6.1.0-test"]


def test_var_is_emptied_into_tmpfiles(image: Path) -> None:
    assert list((image / "var").iterdir()) == []
    lines = tmpfiles(image)
    assert "d /var/lib/app :0750 :0 :0 -" in lines
    assert "C /var/lib/app/state :0644 :0 :0 - /usr/share/factory/var/lib/app/state" in lines
    assert (image / "usr/share/factory/var/lib/app/state").read_text() == "seed"
    assert "L /var/run - - - - /run" in lines


def test_volatile_content_is_dropped_and_declared_paths_are_not_repeated(image: Path) -> None:
    lines = tmpfiles(image)
    assert not any("pkgcache.bin" in line or "dpkg.log" in line or "extended_states" in line for line in lines)
    assert "d /var/cache/apt :0755 :0 :0 -" in lines
    # /var/log and /var/tmp are made by the image's own tmpfiles.d already; an `h` line makes nothing.
    assert not any(line.split()[1] in ("/var/log", "/var/tmp") for line in lines if not line.startswith("#"))
    assert "d /var/log/journal :2755 :0 :0 -" in lines, "the persistent journal's directory"


def test_package_database_moves_into_usr(image: Path) -> None:
    assert (image / "usr/lib/sysimage/dpkg/status").is_file()
    assert "L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg" in tmpfiles(image)
    assert tree.packages(image) == [("base-files", "12.4"), ("libc6", "2.36-9")]


def test_persistent_places_link_into_var(image: Path) -> None:
    expected = {
        "home": "var/home",
        "root": "var/roothome",
        "opt": "var/opt",
        "srv": "var/srv",
        "mnt": "var/mnt",
        "usr/local": "../var/usrlocal",
        "ostree": "sysroot/ostree",
    }
    for link, target in expected.items():
        assert os.readlink(image / link) == target, link
    assert (image / "sysroot").is_dir()
    lines = tmpfiles(image)
    assert "C /var/home/alice/notes :0644 :0 :0 - /usr/share/factory/var/home/alice/notes" in lines
    assert "d /var/usrlocal/bin :0755 :0 :0 -" in lines


def test_merged_usr_and_emptied_dirs(image: Path) -> None:
    assert os.readlink(image / "sbin") == "usr/sbin"
    assert (image / "usr/sbin/legacy-tool").is_file()
    assert os.readlink(image / "bin") == "usr/bin"
    assert list((image / "tmp").iterdir()) == []
    for name in ("proc", "sys", "dev", "run"):
        assert (image / name).is_dir()


def test_rewrite_is_idempotent_on_layout(image: Path) -> None:
    # A tree that already has /usr/etc and no /etc is accepted as it is.
    tree.rewrite(image)
    assert (image / "usr/etc/system/Systemfile").is_file()


def test_both_etc_and_usr_etc_is_refused(tmp_path: Path) -> None:
    root = make_image(tmp_path / "root")
    (root / "usr/etc").mkdir()
    with pytest.raises(ArkesError, match="both /etc and /usr/etc"):
        tree.rewrite(root)


def test_not_an_os_is_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(ArkesError, match="no /usr"):
        tree.rewrite(tmp_path)


def test_kargs_and_os_release(image: Path) -> None:
    assert tree.image_kargs(image) == ["console=ttyS0", "quiet", "rd.debug"]
    assert tree.os_release(image)["ID"] == "arkes"
    assert tree.read_kargs("a=1 b # c\n\n  d\n") == ["a=1", "b", "d"]


def test_a_move_across_filesystems_keeps_owners_and_modes(tmp_path: Path) -> None:
    """Where rename fails (EXDEV: another filesystem, or a lower layer's directory on overlayfs), the copy keeps
    owners, setgid bits and modes: /etc/shadow stays root:shadow and a home its user's."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on a filesystem of its own")
    src = tmp_path / "etc"
    (src / "home/carol").mkdir(parents=True)
    (src / "shadow").write_text("root:*:::::::\n")
    os.chown(src / "shadow", 0, 42)
    os.chmod(src / "shadow", 0o640)
    os.chown(src / "home/carol", 1000, 1000)
    os.chmod(src / "home/carol", 0o2700)
    (src / "link").symlink_to("shadow")
    os.lchown(src / "link", 1000, 1000)
    dst = shm / f"arkes-test-{os.getpid()}"
    try:
        tree.move(src, dst)
        assert not src.exists()
        shadow, home, link = (dst / "shadow").stat(), (dst / "home/carol").stat(), (dst / "link").lstat()
        assert (shadow.st_uid, shadow.st_gid, shadow.st_mode & 0o7777) == (0, 42, 0o640)
        assert (home.st_uid, home.st_gid, home.st_mode & 0o7777) == (1000, 1000, 0o2700)
        assert link.st_uid == 1000
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def test_commit_progress_counts_what_the_commit_filter_sees(tmp_path: Path) -> None:
    # libostree calls the commit filter for the root, for each entry, and once more for each directory's metadata.
    from arkes import build

    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "a/f1").write_text("1")
    (tmp_path / "a/b/f2").write_text("2")
    (tmp_path / "la").symlink_to("a")
    (tmp_path / "a/lf").symlink_to("f1")
    # /, /la, /c twice, /a twice, /a/b twice, /a/b/f2, /a/lf, /a/f1: as the host's libostree reported it.
    assert build.commit_entries(tmp_path) == 11


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Each path of a tree: its mode, and its content or link target."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory, name)
            info = path.lstat()
            content = os.readlink(path) if path.is_symlink() else path.read_text() if path.is_file() else ""
            found[str(path.relative_to(root))] = (info.st_mode, content)
    return found


def test_what_the_rewrite_leaves_untouched_is_neither_written_nor_read(tmp_path: Path) -> None:
    # A checkout of layers leaves those directories empty and the commit takes them from the layers: rewriting the
    # tree so emptied must give what the rewrite of the whole tree gives, with them emptied.
    whole = make_image(tmp_path / "whole")
    for path in (
        "usr/share/doc/app/README",
        "usr/lib/x86_64-linux-gnu/libapp.so",
        "usr/lib/modules/6.1.0-test/kernel/a.ko",
    ):
        (whole / path).parent.mkdir(parents=True, exist_ok=True)
        (whole / path).write_text(path)
    (whole / "usr/lib/tmpfiles.d/app.conf").write_text("d /var/lib/app2 0755 - - -\n")
    sparse = tmp_path / "sparse"
    shutil.copytree(whole, sparse, symlinks=True)
    top = [p.name for p in whole.iterdir() if p.is_dir() and not p.is_symlink()]
    emptied = []
    for directory, dirs, _ in os.walk(sparse):
        for name in list(dirs):
            relative = str((Path(directory) / name).relative_to(sparse))
            verdict = tree.untouched(relative, top)
            if verdict is not None:
                dirs.remove(name)
            if verdict:
                emptied.append(relative)
                for child in (sparse / relative).iterdir():
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    assert {"usr/share/doc", "usr/lib/x86_64-linux-gnu", "usr/lib/modules/6.1.0-test/kernel", "usr/bin"} <= set(emptied)
    # The image's /sbin is a directory: its content moves into /usr/sbin, which is read whole.
    assert not {"usr/sbin", "usr/lib", "usr/lib/tmpfiles.d", "usr/lib/modules", "usr/lib/arkes"} & set(emptied)

    tree.rewrite(whole)
    tree.rewrite(sparse)
    for relative in emptied:
        for child in (whole / relative).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    assert snapshot(sparse) == snapshot(whole)
    assert tree.kernels(sparse) and (sparse / "usr/sbin/legacy-tool").is_file()


def test_a_bin_that_is_a_directory_makes_usr_bin_a_whole_tree() -> None:
    assert tree.untouched("usr/bin", ["usr", "etc"]) is True
    assert tree.untouched("usr/bin", ["usr", "etc", "bin"]) is False
    assert tree.untouched("etc/ssl", ["usr", "etc"]) is False
    assert tree.untouched("usr/share", ["usr"]) is None  # the factory is in it
    assert tree.untouched("usr/share/factory/var", ["usr"]) is False
