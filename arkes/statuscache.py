"""What `os status` keeps between runs: the deployments part of its model, with a fingerprint of everything libostree
reads to list them. While the fingerprint matches, `os status` builds its model from the cache and never loads
libostree: PyGObject and the OSTree typelib alone take longer to load than the whole command may.

The fingerprint covers what ostree_sysroot_load reads (ostree-sysroot.c): whether the sysroot is the booted root,
and this boot's id; the repository's config; the boot loader entries of the current boot version; the deployment
links of ostree/boot.N; ostree/deploy, whose mtime libostree bumps after every change it makes; the stateroot's
deployment directories and origin files (pins and hotfix unlocks rewrite them); /run/ostree/deployment-state
(development and transient unlocks); and on the booted system the staged deployment. Commits are read by checksum,
which those pin down, and never change. What is not about deployments (the last update check, identity files) is
read fresh every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from arkes import __version__, log, status, target
from arkes.errors import ArkesError
from arkes.names import STATEROOT

# Bump when what the cache holds, or how a deployment's status is collected, changes: a cache of another format
# (or written by another version of `os`) has another fingerprint, so it is never used.
FORMAT = 2  # 2: each deployment's source
NAME = "status-cache.json"  # in the machine's state directory

ROOT = "/"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
RUN_OSTREE = "/run/ostree"  # libostree's state of this boot: the staged deployment, unlocks, soft reboots


def collect(path: Path, from_libostree: Callable[[], status.Listing]) -> status.Status:
    """The status of the system at `path`. Its deployments come from the cache when nothing libostree reads has
    changed since it was saved, else from `from_libostree()`, which is then saved for the next time."""
    state_dir = target.var_dir(path) / target.STATE_DIR
    found = fingerprint(path)
    listing = load(state_dir, found) if found is not None else None
    if listing is None:
        listing = from_libostree()
        if found is not None:
            save(state_dir, found, listing)
    return status.finish(listing, state_dir)


def refresh(path: Path) -> None:
    """Save a new cache for the sysroot at `path`, after a verb changed its deployments: libostree is loaded already,
    so this takes a few milliseconds, and the next `os status` need not load it. Never fails the verb."""
    from arkes.ostree import Sysroot

    found = fingerprint(path)
    if found is None:
        return
    try:
        # Loaded again after the fingerprint was taken: a change in between can only leave a fingerprint that no
        # longer matches, never a listing older than its fingerprint.
        listing = status.listing(Sysroot.open(path, private_mounts=False))
    except ArkesError as e:
        log.debug(f"status cache not refreshed: {e.message}")
        return
    save(target.var_dir(path) / target.STATE_DIR, found, listing)


# --- the fingerprint ----------------------------------------------------------------------------------------------


def fingerprint(path: Path) -> tuple[str, ...] | None:
    """What libostree reads to list the deployments of the sysroot at `path`, as lines of text: whatever can change
    that list changes them. None when some of it cannot be read (another user's files): no cache then."""
    try:
        return tuple(_inputs(os.fspath(path)))
    except OSError as e:
        log.debug(f"status cache: cannot fingerprint {path}: {e}")
        return None


def _inputs(sysroot: str) -> Iterator[str]:
    yield f"arkes {__version__}, status cache {FORMAT}"
    yield f"sysroot {sysroot}"
    yield f"boot id {_read(BOOT_ID)}"
    # libostree's rule (ostree_sysroot_initialize): the sysroot is the booted one when /run/ostree-booted exists and
    # the sysroot is the root directory itself. The booted deployment is then found by the root's device and inode.
    root, here = os.stat(ROOT), _stat(sysroot)
    marker = _stat(os.fspath(target.BOOTED_MARKER))
    booted = marker is not None and here is not None and (here.st_dev, here.st_ino) == (root.st_dev, root.st_ino)
    sysroot_id = f"{here.st_dev}:{here.st_ino}" if here is not None else "-"
    yield f"root {root.st_dev}:{root.st_ino}, sysroot {sysroot_id}, booted {booted} ({_meta(marker)})"
    # The repository libostree opens with the sysroot (and what tells `os` that the directory holds a system).
    yield f"ostree/repo/config {_meta(_stat(os.path.join(sysroot, 'ostree/repo/config')))}"
    yield f"ostree/deploy {_meta(_stat(os.path.join(sysroot, 'ostree/deploy')))}"
    # The boot version: boot/loader links to loader.0 or loader.1 (none: 0); its entries are the deployments.
    loader = _link(os.path.join(sysroot, "boot/loader"))
    yield f"boot/loader -> {loader}"
    version = "1" if loader == "loader.1" else "0"
    entries = os.path.join(sysroot, f"boot/loader.{version}/entries")
    for name in _names(entries):
        yield f"entry {name} {_meta(os.stat(os.path.join(entries, name)))}"
    # Each entry's ostree= argument names a link in ostree/boot.N (itself a link to boot.N.0 or boot.N.1, which an
    # order change that keeps the entries swaps), and that link names the deployment's directory.
    bootlinks = os.path.join(sysroot, f"ostree/boot.{version}")
    yield f"ostree/boot.{version} -> {_link(bootlinks)}"
    yield from _tree(bootlinks, "bootlink ")
    deploy = os.path.join(sysroot, "ostree/deploy", STATEROOT, "deploy")
    yield f"deploy {_meta(_stat(deploy))}"
    for name in _names(deploy):
        info = os.lstat(os.path.join(deploy, name))
        if stat.S_ISDIR(info.st_mode):
            # Only its name and identity count: a running system may write into its root directory.
            yield f"deployment {name} {info.st_dev}:{info.st_ino}"
        else:
            yield f"file {name} {_meta(info)}"  # CHECKSUM.SERIAL.origin: pinned, hotfix unlocked, [arkes] values
    # Development and transient unlocks are flags in /run, read for any sysroot's deployments.
    yield from _tree(os.path.join(RUN_OSTREE, "deployment-state"), "state ")
    yield f"nextroot-booted {_meta(_stat(os.path.join(RUN_OSTREE, 'nextroot-booted')))}"
    if booted:
        for name in ("staged-deployment", "staged-deployment-locked"):
            yield f"{name} {_meta(_stat(os.path.join(RUN_OSTREE, name)))}"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _meta(info: os.stat_result | None) -> str:
    if info is None:
        return "-"
    # ctime too: a file put back with its old size and mtime (cp -a, touch -d) still has a new ctime.
    return f"{info.st_mode:o} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns} {info.st_dev}:{info.st_ino}"


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return "-"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return "-"


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _tree(top: str, prefix: str) -> Iterator[str]:
    """Every entry below `top` (following `top` itself when it is a link): directories, files, links' targets."""
    for name in _names(top):
        path = os.path.join(top, name)
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            yield f"{prefix}{name} -> {os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            yield f"{prefix}{name}/"
            yield from _tree(path, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}"


# --- the cache file -----------------------------------------------------------------------------------------------


def load(state_dir: Path, found: tuple[str, ...]) -> status.Listing | None:
    """The listing saved with the fingerprint `found`; None when there is none, it was saved with another
    fingerprint, or it is not one (a damaged file)."""
    try:
        data = json.loads((state_dir / NAME).read_bytes())
        if data["fingerprint"] != list(found):
            return None
        return _listing(data["listing"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.debug(f"status cache in {state_dir} not used: {e!r}")
        return None


def save(state_dir: Path, found: tuple[str, ...], listing: status.Listing) -> None:
    """Keep `listing` with `found`, the fingerprint taken before it was read, replacing the cache atomically. Where
    the state directory cannot be written (not root, a read-only sysroot) there is no cache; a file damaged by a
    crash is not used, so nothing is synced."""
    document = {
        "fingerprint": list(found),
        "listing": {
            "sysroot": listing.sysroot,
            "etc": os.fspath(listing.etc) if listing.etc is not None else None,
            "roots": [os.fspath(root) for root in listing.roots],
            "deployments": [_record(d) for d in listing.deployments],
        },
    }
    temporary = state_dir / f".{NAME}.{os.getpid()}"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(document, separators=(",", ":")))
        os.replace(temporary, state_dir / NAME)
    except OSError as e:
        log.debug(f"status cache not saved in {state_dir}: {e}")
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


_KINDS: dict[str, type] = {"int": int, "str": str, "bool": bool}


def _listing(data: object) -> status.Listing:
    if not isinstance(data, dict):
        raise ValueError("not a listing")
    sysroot, etc, roots, deployments = data["sysroot"], data["etc"], data["roots"], data["deployments"]
    if not isinstance(sysroot, str) or not (etc is None or isinstance(etc, str)):
        raise ValueError("not a listing")
    if not _strings(roots) or not isinstance(deployments, list) or len(roots) != len(deployments):
        raise ValueError("not a listing")
    return status.Listing(
        sysroot,
        tuple(_deployment(d) for d in deployments),
        tuple(Path(root) for root in roots),
        Path(etc) if etc is not None else None,
    )


def _record(d: status.Deployment) -> dict[str, object]:
    """What the cache keeps of a deployment: what libostree listed, not what status.finish reads each time."""
    return {f.name: getattr(d, f.name) for f in _listed()}


def _listed() -> list[dataclasses.Field[object]]:
    return [f for f in dataclasses.fields(status.Deployment) if f.name not in status.FINISHED]


def _deployment(data: object) -> status.Deployment:
    """A deployment's record, each field of the type the model declares (its annotation, a string here)."""
    fields = _listed()
    if not isinstance(data, dict) or set(data) != {f.name for f in fields}:
        raise ValueError("not a deployment")
    values: dict[str, object] = {}
    for f in fields:
        value = data[f.name]
        if f.type == "tuple[str, ...]" and _strings(value):
            values[f.name] = tuple(value)
        elif type(value) is _KINDS.get(str(f.type)):
            values[f.name] = value
        else:
            raise ValueError(f"{f.name}: {value!r} is not {f.type}")
    return status.Deployment(**values)  # type: ignore[arg-type]


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
