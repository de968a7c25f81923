"""Rewrite an image's root filesystem into the OSTree layout of DESIGN.md, and read facts off such a tree.

The rewrite works in place on a writable root (a mounted container, or a test's temporary directory):
/etc moves to /usr/etc, /var is emptied into tmpfiles.d entries (files that must exist are seeded from a factory
copy under /usr/share/factory), the persistent directories become links into /var, the kernel and initramfs move
next to their modules, and the package database moves into /usr so it always matches the image.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from arkes.errors import ArkesError
from arkes.identity import IDENTITY, MACHINE_ID

# Directories of the merged-/usr layout: each must be a link into /usr.
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Persistent, user-owned places: the path in the image and the /var path it becomes.
PERSISTENT = {
    "home": "var/home",
    "root": "var/roothome",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "usr/local": "var/usrlocal",
}

# Package databases leave /var for /usr, where they always describe the image they came with.
PACKAGE_DATABASES = {"var/lib/dpkg": "usr/lib/sysimage/dpkg", "var/lib/rpm": "usr/lib/sysimage/rpm"}

# Content under these /var paths is cache, log or download state: the directories are kept, their files are not.
# apt's record of automatically installed packages belongs with the package database, which moves into /usr:
# seeded into /var it would be the first machine's forever, and named as kept on every upgrade that installs.
VOLATILE = (
    "var/cache",
    "var/log",
    "var/tmp",
    "var/lib/apt/lists",
    "var/lib/apt/extended_states",
    "var/spool/postfix/pid",
)

FACTORY = "usr/share/factory"
# Part of every build's input hash: raised whenever the rewrite makes a different tree of the same image, so that
# installed systems rebuild with it instead of calling themselves up to date. 2: /var seeded with owners (C lines),
# apt's extended_states no longer seeded. 3: each machine's identity stripped (IDENTITY). 4: paths that tmpfiles.d
# lines only adjust (h, z, a, ...) are made too (the persistent journal's /var/log/journal).
REVISION = 4
TMPFILES = "usr/lib/tmpfiles.d/arkes-var.conf"
EMPTIED = ("tmp", "run", "proc", "sys", "dev", "boot")


# What the rewrite, the gate and the facts below write or read under /usr. Whole trees: ...
_USR_WHOLE = ("usr/etc", "usr/local", "usr/lib/sysimage", "usr/lib/tmpfiles.d", "usr/lib/arkes", FACTORY)
# ... and directories of which they read only their own files (a kernel's, systemd's, os-release, init).
_USR_FILES = ("usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/*", "usr/lib/systemd", "usr/sbin")


def untouched(relative: str, top: Collection[str]) -> bool | None:
    """Whether the rewrite leaves the directory `relative` of an image (and all below it) exactly as it is, so
    that a commit can take it from the image's layers without it being checked out: True for such a directory,
    False for one it may change or read as a whole, None for one whose own files it reads, each subdirectory
    deciding for itself. `top`: the image's top-level directories (a /bin that is one moves into /usr/bin)."""
    if relative.partition("/")[0] != "usr":
        return False
    if any(relative == w or relative.startswith(w + "/") for w in _USR_WHOLE):
        return False
    if any(relative == f"usr/{name}" for name in MERGED_USR if name in top):
        return False
    parts = relative.split("/")
    for pattern in _USR_FILES:
        wanted = pattern.split("/")
        if len(wanted) == len(parts) and all(map(fnmatch.fnmatchcase, parts, wanted)):
            return None
    return None if any(w.startswith(relative + "/") for w in _USR_WHOLE) else True


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    initramfs: Path


def rewrite(root: Path) -> list[str]:
    """Turn the image root `root` into a tree OSTree can deploy; return the identity files it removed (as /paths)."""
    if not (root / "usr").is_dir():
        raise ArkesError(f"{root} has no /usr: this is not an operating system image")
    stripped = strip_identity(root)
    _merge_usr(root)
    _place_kernels(root)
    _move_etc(root)
    for src, dst in PACKAGE_DATABASES.items():
        _move_package_database(root, src, dst)
    for src, dst in PERSISTENT.items():
        _make_persistent(root, src, dst)
    _write_var_tmpfiles(root)
    for name in EMPTIED:
        _empty_dir(root / name)
    (root / "sysroot").mkdir(exist_ok=True)
    _replace_with_link(root / "ostree", "sysroot/ostree")
    return stripped


def strip_identity(root: Path) -> list[str]:
    """Remove every IDENTITY file from an image root, and empty its machine-id; return what went, as /paths."""
    removed = []
    for pattern in IDENTITY:
        for path in sorted(root.glob(pattern)):
            if pattern == "var/lib/dbus/machine-id" and path.is_symlink():
                continue  # a link to /etc/machine-id is no identity of its own
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append("/" + str(path.relative_to(root)))
    machine_id = root / MACHINE_ID
    if machine_id.is_file() and not machine_id.is_symlink() and machine_id.stat().st_size:
        # A new file, never a write into the old: the tree may be hard links into an OSTree repository.
        mode = machine_id.stat().st_mode
        machine_id.unlink()
        machine_id.write_bytes(b"")
        machine_id.chmod(stat.S_IMODE(mode))
        removed.append("/" + MACHINE_ID)
    return removed


def _replace_with_link(path: Path, target: str) -> None:
    if path.is_symlink() and os.readlink(path) == target:
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.symlink_to(target)


def _move_tree(src: Path, dst: Path) -> None:
    """Move src's contents into dst, merging directories; the image's newer file wins over nothing."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copystat(src, dst)
    for entry in list(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _move_tree(entry, target)
        else:
            if target.is_symlink() or target.exists():
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            move(entry, target)
    shutil.rmtree(src)


def _keep_owner(src: os.stat_result, dst: Path) -> None:
    os.lchown(dst, src.st_uid, src.st_gid)
    if not stat.S_ISLNK(src.st_mode):
        os.chmod(dst, stat.S_IMODE(src.st_mode))  # chown drops setuid and setgid bits: set them again


def move(src: Path, dst: Path) -> None:
    """Rename, or where the filesystem cannot (a directory of a lower layer on overlayfs), copy keeping owners,
    modes and extended attributes, then remove the source. shutil.move's fallback would give every copy to root."""
    try:
        os.rename(src, dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
        for dirpath, dirnames, filenames in os.walk(src):
            for name in ["", *dirnames, *filenames]:
                path = Path(dirpath) / name if name else Path(dirpath)
                _keep_owner(path.lstat(), dst / path.relative_to(src))
        shutil.rmtree(src)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)
        _keep_owner(src.lstat(), dst)
        src.unlink()


def _merge_usr(root: Path) -> None:
    for name in MERGED_USR:
        path = root / name
        if path.is_symlink():
            continue
        if path.is_dir():
            _move_tree(path, root / "usr" / name)
            path.symlink_to(f"usr/{name}")
        elif (root / "usr" / name).is_dir():
            path.symlink_to(f"usr/{name}")


def _place_kernels(root: Path) -> None:
    """Put vmlinuz and initramfs.img beside the modules of each kernel, where OSTree looks for them."""
    modules = root / "usr/lib/modules"
    boot = root / "boot"
    if not modules.is_dir():
        return
    for moddir in sorted(modules.iterdir()):
        kver = moddir.name
        vmlinuz = moddir / "vmlinuz"
        if not vmlinuz.exists():
            for candidate in (boot / f"vmlinuz-{kver}",):
                if candidate.is_file():
                    move(candidate, vmlinuz)
        initramfs = moddir / "initramfs.img"
        if not initramfs.exists():
            for candidate in (boot / f"initrd.img-{kver}", boot / f"initramfs-{kver}.img"):
                if candidate.is_file() and not candidate.is_symlink():
                    move(candidate, initramfs)
                    break


def kernels(root: Path) -> list[Kernel]:
    modules = root / "usr/lib/modules"
    if not modules.is_dir():
        return []
    return [
        Kernel(d.name, d / "vmlinuz", d / "initramfs.img")
        for d in sorted(modules.iterdir())
        if (d / "vmlinuz").is_file()
    ]


def _move_etc(root: Path) -> None:
    etc, usr_etc = root / "etc", root / "usr/etc"
    if not etc.is_dir() or etc.is_symlink():
        if not usr_etc.is_dir():
            raise ArkesError("the image has neither /etc nor /usr/etc")
        if etc.is_symlink() or etc.exists():
            etc.unlink()
        return
    if usr_etc.exists():
        raise ArkesError("the image has both /etc and /usr/etc; only one can hold the defaults")
    _runtime_files(root, etc)
    move(etc, usr_etc)


# Where a Systemfile declares the hostname: /etc/hostname itself belongs to the container runtime during a build
# (it is mounted over for every RUN), so whatever an image holds there is the build host's, not the system's.
DECLARED_HOSTNAME = "usr/lib/arkes/hostname"
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"


def _runtime_files(root: Path, etc: Path) -> None:
    """Replace what container builds leave in /etc/hostname, /etc/hosts and /etc/resolv.conf with the system's."""
    declared = root / DECLARED_HOSTNAME
    hostname = declared.read_text().strip() if declared.is_file() else ""
    for name in ("hostname", "hosts", "resolv.conf"):
        path = etc / name
        if path.is_symlink() or path.is_file():
            path.unlink()
    if hostname:
        (etc / "hostname").write_text(hostname + "\n")
    names = f"localhost {hostname}" if hostname else "localhost"
    (etc / "hosts").write_text(
        f"127.0.0.1\t{names}\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n"
    )
    if (root / "usr/lib/systemd/systemd-resolved").exists():
        (etc / "resolv.conf").symlink_to(RESOLVED_STUB)


def _move_package_database(root: Path, src: str, dst: str) -> None:
    source = root / src
    if not source.is_dir() or source.is_symlink():
        return
    _move_tree(source, root / dst)
    # /var/lib/dpkg becomes a link created at boot (see the tmpfiles entry below).
    relative = os.path.relpath(root / dst, (root / src).parent)
    source.symlink_to(relative)


def _make_persistent(root: Path, src: str, dst: str) -> None:
    source = root / src
    target = root / dst
    link = os.path.relpath(target, source.parent)
    if source.is_symlink():
        if os.readlink(source) != link:
            source.unlink()
            source.symlink_to(link)
        return
    if source.is_dir():
        _move_tree(source, target)
    elif source.exists():
        source.unlink()
    else:
        target.mkdir(parents=True, exist_ok=True)
    source.symlink_to(link)


# The tmpfiles.d line types that make a path (the others adjust, clean or ignore one that exists: a line
# `h /var/log/journal` sets an attribute, and the journal stays in memory when nothing makes that directory).
CREATING = frozenset("fFdDvqQpLcbC")


def declared_paths(root: Path) -> set[str]:
    """Paths that tmpfiles.d files of the image already make (so we do not declare them twice)."""
    paths: set[str] = set()
    for directory in ("usr/lib/tmpfiles.d", "usr/etc/tmpfiles.d"):
        base = root / directory
        if not base.is_dir():
            continue
        for conf in sorted(base.glob("*.conf")):
            if conf.name == Path(TMPFILES).name:
                continue
            for line in conf.read_text(errors="replace").splitlines():
                fields = line.split()
                if len(fields) >= 2 and fields[0][0] in CREATING:
                    paths.add(fields[1].rstrip("/"))
    return paths


def _is_volatile(relative: str) -> bool:
    return any(relative == v or relative.startswith(v + "/") for v in VOLATILE)


def _account_names(root: Path, name: str) -> dict[int, str]:
    """id → name of the image's users (`passwd`) or groups (`group`), from its /etc wherever it is now."""
    for etc in ("usr/etc", "etc"):
        path = root / etc / name
        if path.is_file():
            names: dict[int, str] = {}
            for line in path.read_text(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    names.setdefault(int(fields[2]), fields[0])
            return names
    return {}


def _write_var_tmpfiles(root: Path) -> None:
    """Describe everything in /var as tmpfiles.d lines, keep needed file content in the factory, empty /var.

    Owners other than root are written by name, so that systemd-tmpfiles resolves them with the machine's own
    account databases at boot, where an account may not have the id it had in the image."""
    var = root / "var"
    declared = declared_paths(root)
    owners = (_account_names(root, "passwd"), _account_names(root, "group"))
    lines = ["# Made by `os` from the image's /var: recreated at boot, never overwriting what exists."]
    if var.is_dir() and not var.is_symlink():
        for dirpath, dirnames, filenames in os.walk(var):
            dirnames.sort()
            current = Path(dirpath)
            relative = current.relative_to(root).as_posix()
            if relative != "var":
                _describe(root, current, relative, lines, declared, owners)
            for name in sorted(filenames) + [d for d in dirnames if (current / d).is_symlink()]:
                entry = current / name
                entry_rel = entry.relative_to(root).as_posix()
                if entry.is_symlink() or not _is_volatile(entry_rel):
                    _describe(root, entry, entry_rel, lines, declared, owners)
        for child in list(var.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        var.mkdir(exist_ok=True)
    out = root / TMPFILES
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # never written into: it may be a hard link into an OSTree repository
    out.write_text("\n".join(lines) + "\n")


def _describe(
    root: Path,
    entry: Path,
    relative: str,
    lines: list[str],
    declared: set[str],
    owners: tuple[dict[int, str], dict[int, str]] = ({}, {}),
) -> None:
    st = entry.lstat()
    path = "/" + relative
    if path in declared:
        return
    users, groups = owners
    user = users.get(st.st_uid, str(st.st_uid)) if st.st_uid else "0"
    group = groups.get(st.st_gid, str(st.st_gid)) if st.st_gid else "0"
    # ":" — only when the path is made: from then on its owner and mode are the machine's (tmpfiles.d(5)).
    perms = f":{stat.S_IMODE(st.st_mode):04o} :{user} :{group}"
    if stat.S_ISLNK(st.st_mode):
        lines.append(f"L {_quote(path)} - - - - {os.readlink(entry)}")
    elif stat.S_ISDIR(st.st_mode):
        lines.append(f"d {_quote(path)} {perms} -")
    elif stat.S_ISREG(st.st_mode):
        factory = root / FACTORY / relative
        factory.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(entry, factory)
        # The copy is made with its owner and mode. (Copied as root and then changed by a `z` line, a file in a
        # directory that is not root's is refused as an "unsafe path transition": PostgreSQL's cluster stayed
        # root's and the server did not start.)
        lines.append(f"C {_quote(path)} {perms} - /{FACTORY}/{relative}")
    # Sockets, fifos and device nodes in /var are runtime state; nothing to keep.


def _quote(path: str) -> str:
    return path if " " not in path and '"' not in path else '"' + path.replace('"', '\\"') + '"'


def _empty_dir(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    if path.is_dir():
        for child in list(path.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        path.mkdir()


# --- facts read off a rewritten tree ------------------------------------------------------------------------


def packages(root: Path) -> list[tuple[str, str]]:
    """(name, version) of every installed package, from the package database the tree carries."""
    status = root / PACKAGE_DATABASES["var/lib/dpkg"] / "status"
    if not status.is_file():
        status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return []
    result: list[tuple[str, str]] = []
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            name = fields["Package"]
            arch = fields.get("Architecture", "")
            if arch and arch not in ("all", "amd64") and ":" not in name:
                name = f"{name}:{arch}"
            result.append((name, fields.get("Version", "")))
    return sorted(result)


def read_kargs(text: str) -> list[str]:
    """Kernel arguments from a kargs file: whitespace-separated, `#` starts a comment."""
    args: list[str] = []
    for line in text.splitlines():
        args.extend(line.split("#", 1)[0].split())
    return args


def image_kargs(root: Path) -> list[str]:
    """Kernel arguments the image declares in /usr/lib/arkes/kargs.d/*, in file name order."""
    directory = root / "usr/lib/arkes/kargs.d"
    args: list[str] = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_file():
                args.extend(read_kargs(path.read_text(errors="replace")))
    return args


def os_release(root: Path) -> dict[str, str]:
    for candidate in ("usr/lib/os-release", "usr/etc/os-release", "etc/os-release"):
        path = root / candidate
        if path.is_file():
            fields: dict[str, str] = {}
            for line in path.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip() and not key.startswith("#"):
                    fields[key.strip()] = value.strip().strip("\"'")
            return fields
    return {}
