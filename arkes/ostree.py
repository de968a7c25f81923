"""libostree access (through PyGObject): the sysroot, its repo, deployments, commits and their metadata, the lock.

Everything here reads OSTree's own data structures; nothing parses `ostree admin status` text.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

__all__ = ["BUILD_REF", "STATEROOT", "BootEntry", "Commit", "Deployment", "Metadata", "Sysroot"]

from arkes import log  # noqa: E402
from arkes.errors import ArkesError, LockedError  # noqa: E402
from arkes.names import BUILD_REF, LAYER_REFS, ORIGIN_GROUP, STATEROOT, layer_ref  # noqa: E402
from arkes.records import BootEntry, Commit, Deployment, Metadata  # noqa: E402

_P = ParamSpec("_P")
_R = TypeVar("_R")

_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Checkout:
    """What a commit of a checkout of layers takes without reading it: the files that are still the repository's
    own objects (OSTree's device and inode cache), and the directories left empty in the checkout, to be taken
    whole from the layers (relative path → their tree's contents and metadata checksums)."""

    cache: Any
    grafted: Mapping[str, tuple[str, str]]
    union: str  # the commit of the whole union, grafted directories included (unreferenced: for this build only)


def _dirty_dirs(diff: Path, emptied: Sequence[str]) -> set[str]:
    """The directories of a layer that OSTree cannot read as they are (relative, "" the top), and their parents:
    those holding whiteouts (character devices 0/0) or, below `emptied`, device nodes, pipes or sockets, and
    those carrying the overlay driver's attributes (an opaque directory). Anything else special is an error."""
    dirty: set[str] = set()
    for directory, _dirs, names in os.walk(diff):
        relative = os.path.relpath(directory, diff)
        relative = "" if relative == "." else relative
        flagged = any(x.startswith(_OVERLAY_XATTRS) for x in os.listxattr(directory, follow_symlinks=False))
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                continue
            flagged = True
            path = os.path.join(relative, name)
            if not (stat.S_ISCHR(info.st_mode) and info.st_rdev == 0) and path.split("/", 1)[0] not in emptied:
                raise ArkesError(f"/{path} in the image is a device, pipe or socket, which OSTree cannot hold")
        while flagged and relative not in dirty:
            dirty.add(relative)
            if not relative:
                break
            relative = os.path.dirname(relative)
    return dirty


def _write_layer_dir(repo: Any, diff: Path, relative: str, mtree: Any, scratch: Path, dirty: set[str]) -> None:
    """Fill `mtree` with the layer directory `relative`: read by OSTree straight from container storage where it
    can be, else through a small stand-in directory with the same owner, mode and attributes (but the overlay
    driver's), its files copied, whiteouts as `.wh.NAME`, an opaque directory marked `.wh..wh..opq`."""
    source = diff / relative
    if relative not in dirty:
        repo.write_directory_to_mtree(Gio.File.new_for_path(os.fspath(source)), mtree, None, None)
        return
    stand_in = scratch / f"dir-{len(list(scratch.iterdir()))}"
    _copy_dir_meta(source, stand_in)
    subdirs = []
    for entry in os.scandir(source):
        info = entry.stat(follow_symlinks=False)
        target = stand_in / entry.name
        if stat.S_ISDIR(info.st_mode):
            subdirs.append(entry.name)
        elif stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            _marker(stand_in / (_WHITEOUT + entry.name))
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(entry.path), target)
            os.lchown(target, info.st_uid, info.st_gid)
        elif stat.S_ISREG(info.st_mode):
            shutil.copy2(entry.path, target)
            os.chown(target, info.st_uid, info.st_gid)
            os.chmod(target, stat.S_IMODE(info.st_mode))  # chown drops setuid and setgid bits
            for name in os.listxattr(target):
                if name.startswith(_OVERLAY_XATTRS):
                    os.removexattr(target, name)
        # else a device node below an emptied directory: left out (see _dirty_dirs)
    repo.write_directory_to_mtree(Gio.File.new_for_path(os.fspath(stand_in)), mtree, None, None)
    for name in subdirs:
        _, sub = mtree.ensure_dir(name)
        _write_layer_dir(repo, diff, os.path.join(relative, name), sub, scratch, dirty)


def _merge_layer(repo: Any, mtree: Any, contents: str, meta: str, relative: str, marked: set[str] | None) -> None:
    """Lay the layer directory (`contents`, `meta`) over `mtree`: its entries replace what is there, `.wh.NAME`
    removes NAME, `.wh..wh..opq` empties the directory first. A directory new to the union with no whiteouts in it
    (`marked`: where the layer has them; None: unknown) is taken whole, without reading it."""
    mtree.set_metadata_checksum(meta)
    _, tree = repo.load_variant(OSTree.ObjectType.DIR_TREE, contents)
    files, dirs = _dirtree_entries(tree)
    if any(name == _OPAQUE for name, _ in files):
        for name in [*mtree.get_files(), *mtree.get_subdirs()]:
            mtree.remove(name, False)
    for name, checksum in files:
        if name == _OPAQUE:
            continue
        if name.startswith(_WHITEOUT):
            mtree.remove(name.removeprefix(_WHITEOUT), True)
            continue
        if name in mtree.get_subdirs():
            mtree.remove(name, False)
        mtree.replace_file(name, checksum)
    for name, sub_contents, sub_meta in dirs:
        path = os.path.join(relative, name)
        if name in mtree.get_files():
            mtree.remove(name, False)
        existing = mtree.get_subdirs().get(name)
        if existing is None:
            _, sub = mtree.ensure_dir(name)
            if marked is not None and path not in marked:
                sub.fill_empty_from_dirtree(repo, sub_contents, sub_meta)
                continue
            existing = sub
        _merge_layer(repo, existing, sub_contents, sub_meta, path, marked)


def _checksum(variant: Any) -> str:
    """The hex form of a checksum held as bytes (`ay`) in a variant."""
    return bytes(variant.get_data_as_bytes().get_data()).hex()


def _dirtree_entries(tree: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """A tree object's files (name, content checksum) and directories (name, tree and metadata checksums), read
    entry by entry: PyGObject's generic unpack makes a list of integers of every checksum, ten times slower."""
    files_v, dirs_v = tree.get_child_value(0), tree.get_child_value(1)
    files = []
    for i in range(files_v.n_children()):
        entry = files_v.get_child_value(i)
        files.append((entry.get_child_value(0).get_string(), _checksum(entry.get_child_value(1))))
    dirs = []
    for i in range(dirs_v.n_children()):
        entry = dirs_v.get_child_value(i)
        name = entry.get_child_value(0).get_string()
        dirs.append((name, _checksum(entry.get_child_value(1)), _checksum(entry.get_child_value(2))))
    return files, dirs


def _empty_untouched(
    mtree: Any, relative: str, untouched: Callable[[str], bool | None], grafted: dict[str, tuple[str, str]]
) -> None:
    """Empty the directories of a written `mtree` that `untouched` says are taken whole, recording their trees."""
    for name, sub in mtree.get_subdirs().items():
        path = os.path.join(relative, name)
        verdict = untouched(path)
        if verdict is None:
            _empty_untouched(sub, path, untouched, grafted)
        elif verdict:
            grafted[path] = (sub.get_contents_checksum(), sub.get_metadata_checksum())
            for entry in [*sub.get_files(), *sub.get_subdirs()]:
                sub.remove(entry, False)


def _graft(repo: Any, mtree: Any, relative: str, contents: str, meta: str) -> None:
    """Put the tree `contents` (with `meta`) at the directory `relative` of `mtree`, which must be there, empty."""
    node = mtree
    for name in relative.split("/"):
        node = node.get_subdirs().get(name) if node is not None else None
    if node is None or node.get_files() or node.get_subdirs():
        raise ArkesError(f"/{relative} was changed after the checkout, which takes it from the layers as it is")
    node.fill_empty_from_dirtree(repo, contents, meta)


def _copy_dir_meta(source: Path, target: Path) -> None:
    target.mkdir()
    info = source.lstat()
    os.chown(target, info.st_uid, info.st_gid)
    os.chmod(target, stat.S_IMODE(info.st_mode))
    for name in os.listxattr(source, follow_symlinks=False):
        value = os.getxattr(source, name, follow_symlinks=False)
        if not name.startswith(_OVERLAY_XATTRS):
            os.setxattr(target, name, value, follow_symlinks=False)
        elif name.endswith(".overlay.opaque") and value == b"y":
            _marker(target / _OPAQUE)


def _marker(path: Path) -> None:
    path.write_bytes(b"")
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """libostree built without the journal prints what it frees on stdout ("Freed objects: ..."), where `--json`
    documents go: while it writes deployments, its stdout is our stderr."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_SUFFIX = {
    OSTree.ObjectType.FILE: "file",
    OSTree.ObjectType.DIR_TREE: "dirtree",
    OSTree.ObjectType.DIR_META: "dirmeta",
    OSTree.ObjectType.COMMIT: "commit",
}


# Where each field is kept in the commit's a{sv} metadata, and its GVariant type.
_KEYS: dict[str, tuple[str, str]] = {
    "version": ("version", "s"),
    "input_hash": ("arkes.input-hash", "s"),
    "base_image": ("arkes.base-image", "s"),
    "base_digest": ("arkes.base-digest", "s"),
    "systemfile_sha256": ("arkes.systemfile-sha256", "s"),
    "packages": ("arkes.packages", "a(ss)"),
    "kargs": ("arkes.kargs", "as"),
    "tool_version": ("arkes.tool-version", "s"),
    "context": ("arkes.context", "a(ss)"),
    "machine_kargs": ("arkes.machine-kargs", "as"),
    "package_state": ("arkes.package-state", "s"),
    "package_indexes": ("arkes.package-indexes", "a(ss)"),
    "kernel": ("ostree.linux", "s"),
    "allowed_secrets": ("arkes.allowed-secrets", "as"),
    "layers": ("arkes.layers", "as"),
}


def _read_metadata(raw: Mapping[str, object]) -> Metadata:
    values: dict[str, object] = {}
    for name, (key, kind) in _KEYS.items():
        value = raw.get(key)
        if kind == "s":
            values[name] = str(value) if value is not None else ""
        elif kind == "as":
            values[name] = tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()
        else:
            pairs = value if isinstance(value, list | tuple) else ()
            values[name] = tuple((str(p[0]), str(p[1])) for p in pairs if isinstance(p, list | tuple) and len(p) == 2)
    return Metadata(**values)  # type: ignore[arg-type]


def _metadata_variant(metadata: Metadata) -> GLib.Variant:
    entries = {"ostree.bootable": GLib.Variant("b", True)}
    for name, (key, kind) in _KEYS.items():
        value = getattr(metadata, name)
        if name == "kernel" and not value:
            continue  # no kernel: OSTree finds none to boot, and the gate has refused already
        entries[key] = GLib.Variant(kind, list(value) if isinstance(value, tuple) else value)
    return GLib.Variant("a{sv}", entries)


def _read_only(*mountpoints: Path) -> bool:
    """Whether any of these paths lies on a read-only mount."""
    for mountpoint in mountpoints:
        try:
            if os.statvfs(mountpoint).f_flag & os.ST_RDONLY:
                return True
        except OSError:
            continue
    return False


def _error(what: str, e: GLib.Error) -> ArkesError:
    # OSTree refuses before the disk is full (min-free-space-percent) or fails when it is: the same cause for a person.
    if "No space left" in e.message or "min-free-space" in e.message:
        return ArkesError(
            f"{what}: not enough disk space ({e.message})",
            hint="free some space (`os prune` removes old deployments and build images) and try again",
        )
    if "Read-only file system" in e.message or "Permission denied" in e.message:
        return ArkesError(
            f"{what}: {e.message}",
            hint="this command changes the sysroot: it must be writable, and `os` run as root",
        )
    return ArkesError(f"{what}: {e.message}", hint="`os --debug` shows where libostree failed")


def _wrap(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Turn a GLib.Error raised by the wrapped method into an ArkesError saying what was being done."""

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(func)
        def inner(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return func(*args, **kwargs)
            except GLib.Error as e:
                raise _error(what, e) from e
            except OSError as e:
                # Python's own file operations here (the shadow of an image layer) fail the same ways.
                if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM):
                    raise _error(what, GLib.Error(os.strerror(e.errno) + f": {e.filename}")) from e
                raise

        return inner

    return decorate


class Sysroot:
    """An OSTree sysroot: a directory (`--sysroot`) or the booted system's `/`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(os.fspath(path)))
        self._commit_roots: dict[str, Any] = {}
        self._commits: dict[str, Commit] = {}  # a commit never changes: each is read once

    @staticmethod
    def is_initialized(path: Path) -> bool:
        return (path / "ostree" / "repo" / "config").exists()

    @staticmethod
    def initialize(path: Path) -> Sysroot:
        try:
            Sysroot._initialize(path)
        except GLib.Error as e:
            raise _error(f"initializing the sysroot {path}", e) from e
        return Sysroot.open(path)

    @staticmethod
    def _initialize(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        sysroot = Sysroot(path)
        sysroot._sysroot.ensure_initialized(None)
        sysroot._sysroot.load(None)
        sysroot._sysroot.init_osname(STATEROOT, None)
        repo = sysroot._repo
        config = repo.copy_config()
        # Boot menus are written by arkes itself from the boot loader entries (see DESIGN: Debian's GRUB has no
        # blscfg and OSTree's GRUB backend would run grub-mkconfig inside the deployment).
        config.set_string("sysroot", "bootloader", "none")
        config.set_boolean("sysroot", "readonly", False)
        repo.write_config(config)

    @staticmethod
    def open(path: Path, *, private_mounts: bool = True) -> Sysroot:
        """Load a sysroot. On the booted system, changes happen in a private mount namespace unless
        `private_mounts` is False (for `unlock`, whose /usr overlay must be seen by the whole system)."""
        sysroot = Sysroot(path)
        try:
            if path == Path("/") and private_mounts and _read_only(Path("/sysroot"), Path("/boot")):
                # Where /sysroot (or /boot) is mounted read-only, libostree makes a private mount namespace to write
                # it. Only there: it keeps the repository it opened before on the first mount, and writes the new
                # deployment through the second, so no file can be a hard link to its object and each deployment
                # becomes a full copy. An Arkēs system mounts both writable (sysroot.readonly is false).
                sysroot._sysroot.initialize_with_mount_namespace(None)
            sysroot._sysroot.load(None)
        except GLib.Error as e:
            raise _error(f"loading the sysroot {path}", e) from e
        return sysroot

    def system_id(self, *, create: bool) -> str:
        """This system's own id, kept in its repository's config: what its build images are tagged with, so that
        sysroots sharing one container storage never count or remove each other's images. "" when there is none
        yet and `create` is false."""
        config = self._repo.copy_config()
        try:
            return str(config.get_string(ORIGIN_GROUP, "system-id"))
        except GLib.Error:
            if not create:
                return ""
        value = uuid.uuid4().hex
        config.set_string(ORIGIN_GROUP, "system-id", value)
        try:
            self._repo.write_config(config)
        except GLib.Error as e:
            raise _error("recording the system id", e) from e
        return value

    @_wrap("reloading the sysroot")
    def reload(self) -> None:
        self._sysroot.load(None)

    @property
    def _repo(self) -> OSTree.Repo:
        return self._sysroot.repo()

    @property
    def repo_path(self) -> Path:
        return self.path / "ostree" / "repo"

    @contextmanager
    def lock(self, wait: float = 0) -> Iterator[None]:
        """The sysroot lock (shared with ostree and every other tool using libostree); refuse when it is held,
        or, with `wait`, when it is still held after that many seconds."""
        deadline = time.monotonic() + wait
        waiting = False
        while not self._try_lock():
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"another process is changing the system at {self.path} (the sysroot lock is held)",
                    hint="wait for the other `os` command to finish, then try again",
                )
            if not waiting:
                log.info("another process holds the sysroot lock: waiting for it")
                waiting = True
            time.sleep(0.5)
        try:
            yield
        finally:
            self._sysroot.unlock()

    def _try_lock(self) -> bool:
        try:
            acquired = self._sysroot.try_lock()
        except GLib.Error as e:
            raise ArkesError(
                f"cannot take the sysroot lock at {self.path}: {e.message}",
                hint="the sysroot must be writable for this command: mount it read-write (or run it as root)"
                if "Read-only" in e.message or "Permission denied" in e.message
                else None,
            ) from e
        if isinstance(acquired, tuple):
            acquired = acquired[-1]
        return bool(acquired)

    # --- deployments -------------------------------------------------------------------------------------

    def _record(self, native: Any) -> Deployment:
        booted = self._sysroot.get_booted_deployment()
        bootconfig = native.get_bootconfig()
        boot = None
        if bootconfig is not None:
            boot = BootEntry(
                str(bootconfig.get("linux") or ""),
                str(bootconfig.get("initrd") or ""),
                str(bootconfig.get("options") or ""),
            )
        keyfile = native.get_origin()
        origin: tuple[tuple[str, str], ...] = ()
        if keyfile is not None and keyfile.has_group(ORIGIN_GROUP):
            keys = keyfile.get_keys(ORIGIN_GROUP)[0]
            origin = tuple((str(k), str(keyfile.get_string(ORIGIN_GROUP, k))) for k in keys)
        unlocked = native.get_unlocked()
        return Deployment(
            checksum=str(native.get_csum()),
            serial=int(native.get_deployserial()),
            stateroot=str(native.get_osname()),
            root=self.path / str(self._sysroot.get_deployment_dirpath(native)),
            booted=booted is not None and bool(booted.equal(native)),
            staged=bool(native.is_staged()),
            pinned=bool(native.is_pinned()),
            unlocked=str(native.unlocked_state_to_string(unlocked)) if unlocked else "none",
            boot=boot,
            origin=origin,
        )

    def _native(self, deployment: Deployment) -> Any:
        """libostree's object for a record of ours (it may have been listed before a reload)."""
        for native in self._sysroot.get_deployments():
            if (native.get_osname(), native.get_csum(), native.get_deployserial()) == (
                deployment.stateroot,
                deployment.checksum,
                deployment.serial,
            ):
                return native
        raise ArkesError(f"deployment {deployment.checksum[:12]}.{deployment.serial} is no longer there")

    def deployments(self) -> list[Deployment]:
        """Our deployments (stateroot `arkes`), in boot order: the first is the default."""
        return [self._record(d) for d in self._sysroot.get_deployments() if d.get_osname() == STATEROOT]

    def all_deployments(self) -> list[Deployment]:
        """Every deployment of the sysroot, of any stateroot, in boot order."""
        return [self._record(d) for d in self._sysroot.get_deployments()]

    @property
    def booted(self) -> Deployment | None:
        native = self._sysroot.get_booted_deployment()
        return self._record(native) if native is not None else None

    @property
    def staged(self) -> Deployment | None:
        native = self._sysroot.get_staged_deployment()
        return self._record(native) if native is not None else None

    def default(self) -> Deployment | None:
        deployments = self.deployments()
        return deployments[0] if deployments else None

    def merge_deployment(self) -> Deployment | None:
        """The deployment whose /etc a new one merges with (the booted one, else the default)."""
        native = self._sysroot.get_merge_deployment(STATEROOT)
        return self._record(native) if native is not None else None

    def deployment_dir(self, deployment: Deployment) -> Path:
        return deployment.root

    # --- commits -----------------------------------------------------------------------------------------

    @_wrap("reading a commit")
    def commit(self, checksum: str) -> Commit:
        found = self._commits.get(checksum)
        if found is None:
            _, variant, _ = self._repo.load_commit(checksum)
            found = self._commits[checksum] = Commit(
                checksum=checksum,
                timestamp=int(OSTree.commit_get_timestamp(variant)),
                subject=str(variant.get_child_value(3).get_string()),
                metadata=_read_metadata(variant.get_child_value(0).unpack()),
            )
        return found

    @_wrap("resolving a ref")
    def resolve(self, ref: str) -> str | None:
        _, checksum = self._repo.resolve_rev(ref, True)
        return checksum if checksum else None

    @_wrap("committing the tree")
    def write_commit(
        self,
        tree: Path,
        *,
        subject: str,
        metadata: Metadata,
        ref: str,
        on_file: Callable[[int], None] | None = None,
        known: Checkout | None = None,
        refs: Mapping[str, str] | None = None,
    ) -> str:
        """Commit the directory `tree` in one transaction and point `ref` at it; return the checksum.

        The ref moves only when every object is written, so an interrupted commit leaves no ref and only
        staging leftovers that the next transaction or prune removes. `known`: `tree` is a checkout of layers
        (checkout_layers), whose files that are still the repository's own are taken without reading them, and
        whose directories left empty are taken whole from the layers. `refs` (name → commit) are set in the same
        transaction.
        """
        repo = self._repo
        count = [0]

        def commit_filter(_repo: Any, _path: str, _info: Any, *_user: Any) -> OSTree.RepoCommitFilterResult:
            count[0] += 1
            if on_file and count[0] % 500 == 0:
                on_file(count[0])
            return OSTree.RepoCommitFilterResult.ALLOW

        modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, commit_filter, None)
        if known is not None:
            modifier.set_devino_cache(known.cache)
        # Ctrl-C must not raise inside the filter callback (PyGObject would print and swallow it): it cancels the
        # walk instead, and the interruption is raised once libostree has returned.
        cancellable = Gio.Cancellable()
        previous = signal.signal(signal.SIGINT, lambda *_: cancellable.cancel())
        repo.prepare_transaction(None)
        try:
            mtree = OSTree.MutableTree.new()
            repo.write_directory_to_mtree(Gio.File.new_for_path(os.fspath(tree)), mtree, modifier, cancellable)
            for relative, (contents, meta) in (known.grafted if known is not None else {}).items():
                _graft(repo, mtree, relative, contents, meta)
            _, root = repo.write_mtree(mtree, cancellable)
            _, checksum = repo.write_commit(None, subject, None, _metadata_variant(metadata), root, cancellable)
            repo.transaction_set_ref(None, ref, checksum)
            for name, commit in (refs or {}).items():
                repo.transaction_set_ref(None, name, commit)
            repo.commit_transaction(cancellable)
        except BaseException as e:
            repo.abort_transaction(None)
            if cancellable.is_cancelled():
                raise KeyboardInterrupt from e
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        return str(checksum)

    # --- image layers --------------------------------------------------------------------------------------

    def layer_commit(self, digest: str) -> str | None:
        """The commit of an image layer imported earlier (by its digest), or None."""
        return self.resolve(layer_ref(digest))

    @_wrap("importing an image layer")
    def import_layer(self, digest: str, diff: Path, emptied: Sequence[str] = ()) -> str:
        """Commit one image layer, from its directory in container storage (overlay driver); return the commit.

        Its ref (arkes/layers/HEX, layer_ref) is set with the system commit made of it (write_commit's `refs`), so
        a build that is refused or killed leaves no ref behind, and a half-written layer is never found. Its
        whiteouts become `.wh.NAME` files and its opaque directories hold `.wh..wh..opq`, as in an OCI layer
        archive, and the overlay driver's own attributes are left out. Device nodes, pipes and sockets cannot be
        in OSTree: below the top-level directories `emptied` (which every system tree has emptied) they are left
        out, anywhere else they are an error."""
        repo = self._repo
        dirty = _dirty_dirs(diff, emptied)
        with tempfile.TemporaryDirectory(prefix="arkes-layer-", dir=self.scratch_dir()) as scratch:
            repo.prepare_transaction(None)
            try:
                mtree = OSTree.MutableTree.new()
                _write_layer_dir(repo, diff, "", mtree, Path(scratch), dirty)
                _, root = repo.write_mtree(mtree, None)
                # Where it has whiteouts (the directories that do and their parents): a union reads only those.
                metadata = GLib.Variant(
                    "a{sv}",
                    {
                        "arkes.layer-digest": GLib.Variant("s", digest),
                        "arkes.layer-marked": GLib.Variant("as", sorted(dirty)),
                    },
                )
                _, checksum = repo.write_commit(None, f"layer {digest}", None, metadata, root, None)
                repo.commit_transaction(None)
            except BaseException:
                repo.abort_transaction(None)
                raise
        return str(checksum)

    @_wrap("checking out image layers")
    def checkout_layers(
        self,
        commits: Sequence[str],
        destination: Path,
        untouched: Callable[[str, Collection[str]], bool | None] | None = None,
    ) -> Checkout:
        """Check out the union of layer commits (bottom first, with OCI semantics for whiteouts and opaque
        directories) into `destination`, every regular file a hard link into the repository; returns what commit
        needs to take those files without reading them. `destination` must be on the repository's filesystem
        (see scratch_dir). The union is made in OSTree's tree objects, untouched directories taken whole, and
        checked out once. `untouched(relative, top-level directories)` (see tree.untouched) names directories
        that are checked out empty, their content taken from the layers by write_commit."""
        repo = self._repo
        repo.prepare_transaction(None)
        try:
            mtree = OSTree.MutableTree.new()
            for commit in commits:
                _, variant, _ = repo.load_commit(commit)
                marked_value = variant.get_child_value(0).unpack().get("arkes.layer-marked")
                marked = set(marked_value) if isinstance(marked_value, list) else None
                contents = _checksum(variant.get_child_value(6))
                meta = _checksum(variant.get_child_value(7))
                _merge_layer(repo, mtree, contents, meta, "", marked)
            _, root = repo.write_mtree(mtree, None)
            _, union = repo.write_commit(None, "layers", None, None, root, None)
            grafted: dict[str, tuple[str, str]] = {}
            if untouched is not None:
                top = frozenset(mtree.get_subdirs())
                _empty_untouched(mtree, "", lambda relative: untouched(relative, top), grafted)
            if grafted:
                _, root = repo.write_mtree(mtree, None)
                _, sparse = repo.write_commit(None, "layers, sparse", None, None, root, None)
            else:
                sparse = union
            repo.commit_transaction(None)
        except BaseException:
            repo.abort_transaction(None)
            raise
        cache = OSTree.RepoDevInoCache.new()
        options = OSTree.RepoCheckoutAtOptions()
        options.force_copy_zerosized = True
        options.set_devino(cache)
        # Named from the repository's own directory: on a booted system libostree reaches the repository through
        # another mount of the same filesystem than the path does, and a hard link between two mounts is refused
        # (EXDEV), on which libostree quietly copies every file instead.
        inside = os.path.relpath(destination, self.repo_path)
        if inside.startswith(".."):
            raise ArkesError(f"{destination} is not inside the repository {self.repo_path}")
        repo.checkout_at(options, repo.get_dfd(), inside, sparse, None)
        return Checkout(cache, grafted, str(union))

    @_wrap("listing image layers")
    def layers(self) -> dict[str, str]:
        """Every image layer committed here: its digest (sha256:...) and commit."""
        _, refs = self._repo.list_refs(None, None)
        found = {str(ref): str(commit) for ref, commit in refs.items() if str(ref).startswith(LAYER_REFS)}
        return {"sha256:" + ref.removeprefix(LAYER_REFS): commit for ref, commit in found.items()}

    @_wrap("removing image layers")
    def remove_layers(self, digests: Sequence[str]) -> None:
        """Drop the refs of layer commits; their objects go with the next prune unless something else has them."""
        for digest in digests:
            self._repo.set_ref_immediate(None, layer_ref(digest), None, None)

    def scratch_dir(self) -> Path:
        """A directory on the repository's filesystem for checkouts that hard-link its objects."""
        path = self.path / "ostree/repo/tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- changing deployments ----------------------------------------------------------------------------

    @_wrap("deploying")
    def deploy(
        self,
        checksum: str,
        *,
        origin: Mapping[str, str],
        kargs: Sequence[str],
        prepare: Callable[[Path], None] | None = None,
    ) -> Deployment:
        """Deploy `checksum` as the new default, keeping every existing deployment.

        `prepare(deployment_dir)` may change the new deployment (e.g. its /etc) before it enters the boot
        configuration; if it fails, the half-made deployment is never referenced and cleanup removes it.
        """
        merge = self._sysroot.get_merge_deployment(STATEROOT)
        keyfile = GLib.KeyFile()
        keyfile.set_string("origin", "unconfigured-state", "Arkēs systems are updated with `os upgrade`")
        for key, value in origin.items():
            keyfile.set_string(ORIGIN_GROUP, key, value)
        if self.booted is not None:
            # A running system stages: OSTree finishes the deployment at shutdown, merging /etc as it is then,
            # so edits made after the upgrade still reach the new system.
            _, native = self._sysroot.stage_tree(STATEROOT, checksum, keyfile, merge, list(kargs), None)
            if prepare is not None:
                prepare(self.path / str(self._sysroot.get_deployment_dirpath(native)))
            self.reload()
            return self._record(native)
        _, native = self._sysroot.deploy_tree(STATEROOT, checksum, keyfile, merge, list(kargs), None)
        if prepare is not None:
            prepare(self.path / str(self._sysroot.get_deployment_dirpath(native)))
        flags = OSTree.SysrootSimpleWriteDeploymentFlags.RETAIN
        with _quiet_stdout():
            self._sysroot.simple_write_deployment(STATEROOT, native, merge, flags, None)
        self.reload()
        return self._record(native)

    @_wrap("unlocking")
    def unlock(self, deployment: Deployment, hotfix: bool) -> None:
        state = OSTree.DeploymentUnlockedState.HOTFIX if hotfix else OSTree.DeploymentUnlockedState.DEVELOPMENT
        self._sysroot.deployment_unlock(self._native(deployment), state, None)
        self.reload()

    @_wrap("reading the commit's tree")
    def _commit_file(self, checksum: str, path: str) -> Any:
        """The Gio.File of `path` inside a commit (an OSTree.RepoFile), or None when absent."""
        root = self._commit_roots.get(checksum)
        if root is None:
            # A commit never changes: its root is read once, however many of its files are asked for.
            _, root, _ = self._repo.read_commit(checksum, None)
            self._commit_roots[checksum] = root
        node = root.resolve_relative_path(path.lstrip("/"))
        return node if node.query_exists(None) else None

    @_wrap("reading the commit's tree")
    def boot_files(self, checksum: str) -> list[tuple[str, int]]:
        """(content checksum, size) of each kernel and initramfs in a commit's /usr/lib/modules."""
        modules = self._commit_file(checksum, "usr/lib/modules")
        if modules is None:
            return []
        found = []
        for info in modules.enumerate_children("standard::name", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None):
            for name in ("vmlinuz", "initramfs.img"):
                node = modules.get_child(info.get_name()).get_child(name)
                if node.query_exists(None):
                    node.ensure_resolved()
                    size = node.query_info("standard::size", Gio.FileQueryInfoFlags.NONE, None).get_size()
                    found.append((str(node.get_checksum()), int(size)))
        return found

    @_wrap("reading the commit's tree")
    def file_checksum(self, checksum: str, path: str) -> str | None:
        """The content checksum of the file or link `path` inside a commit; None when absent or a directory."""
        node = self._commit_file(checksum, path)
        if node is None:
            return None
        node.ensure_resolved()
        if node.query_file_type(Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None) == Gio.FileType.DIRECTORY:
            return None
        return str(node.get_checksum())

    @_wrap("walking a commit")
    def reachable_objects(self, checksum: str) -> set[tuple[str, str]]:
        """(checksum, kind) of every object a commit reaches; kind is the object file's suffix (file, dirtree, ...)."""
        _, reachable = self._repo.traverse_commit(checksum, 0, None)
        objects = set()
        for key in reachable:
            csum, objtype = key.unpack() if hasattr(key, "unpack") else key
            objects.add((str(csum), _SUFFIX.get(OSTree.ObjectType(objtype), "")))
        return objects

    @_wrap("reading the commit's tree")
    def commit_is_dir(self, checksum: str, path: str) -> bool | None:
        """Whether `path` inside a commit is a directory (not following links); None when absent."""
        node = self._commit_file(checksum, path)
        if node is None:
            return None
        kind = node.query_file_type(Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        return bool(kind == Gio.FileType.DIRECTORY)

    @_wrap("reading the commit's tree")
    def read_commit_file(self, checksum: str, path: str) -> bytes | None:
        """The content of the file `path` inside a commit, or None when absent. Read from its stream: Gio's
        load_contents asks a repository file's stream for file info it does not have, and newer GLib prints a
        critical warning for each file read that way."""
        node = self._commit_file(checksum, path)
        if node is None:
            return None
        stream = node.read(None)
        chunks = []
        try:
            while True:
                chunk = stream.read_bytes(1 << 20, None)
                if chunk.get_size() == 0:
                    break
                chunks.append(bytes(chunk.get_data()))
        finally:
            stream.close(None)
        return b"".join(chunks)

    @_wrap("writing the deployment list")
    def write_deployments(self, deployments: Sequence[Deployment]) -> None:
        """Make `deployments` (in boot order, the first the default) the whole list; others are removed."""
        with _quiet_stdout():
            self._sysroot.write_deployments([self._native(d) for d in deployments], None)
        self.reload()

    @_wrap("pinning")
    def set_pinned(self, deployment: Deployment, pinned: bool) -> None:
        self._sysroot.deployment_set_pinned(self._native(deployment), pinned)
        self.reload()

    @_wrap("cleaning up")
    def cleanup(self) -> tuple[int, int]:
        """Remove undeployed directories and unreferenced objects; return (objects, bytes) freed."""
        # prepare_cleanup removes undeployed directories and rewrites the ostree/N/M/I refs that hold every
        # deployment's commit, so a refs-only prune keeps exactly the deployments and our own refs.
        self._sysroot.prepare_cleanup(None)
        result = self._repo.prune(OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
        _, _total, pruned, freed = result
        log.debug(f"pruned {pruned} objects, {freed} bytes")
        return int(pruned), int(freed)
