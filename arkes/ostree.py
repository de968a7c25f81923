"""libostree access (through PyGObject): the sysroot, its repo, deployments, commits and their metadata, the lock.

Everything here reads OSTree's own data structures; nothing parses `ostree admin status` text.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

__all__ = ["BUILD_REF", "STATEROOT", "Commit", "GLib", "Gio", "OSTree", "Sysroot"]

from arkes import log  # noqa: E402
from arkes.errors import ArkesError, LockedError  # noqa: E402

STATEROOT = "arkes"
# The newest commit `os build` made; keeps it alive for a later deploy even when nothing deploys it yet.
BUILD_REF = "arkes/build"
ORIGIN_GROUP = "arkes"

# Commit metadata keys (see docs/status.md).
META_INPUT_HASH = "arkes.input-hash"
META_BASE_IMAGE = "arkes.base-image"
META_BASE_DIGEST = "arkes.base-digest"
META_SYSTEMFILE_SHA256 = "arkes.systemfile-sha256"
META_PACKAGES = "arkes.packages"
META_KARGS = "arkes.kargs"
META_TOOL_VERSION = "arkes.tool-version"
META_CONTEXT = "arkes.context"
META_MACHINE_KARGS = "arkes.machine-kargs"
META_PACKAGE_STATE = "arkes.package-state"
META_PACKAGE_INDEXES = "arkes.package-indexes"


def _error(what: str, e: GLib.Error) -> ArkesError:
    # OSTree refuses before the disk is full (min-free-space-percent) or fails when it is: the same cause for a person.
    if "No space left" in e.message or "min-free-space" in e.message:
        return ArkesError(
            f"{what}: not enough disk space ({e.message})",
            hint="free some space (`os prune` removes old deployments and build images) and try again",
        )
    return ArkesError(f"{what}: {e.message}")


def _wrap(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except GLib.Error as e:
                raise _error(what, e) from e

        return inner

    return decorate


@dataclass(frozen=True)
class Commit:
    checksum: str
    timestamp: int
    subject: str
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))


class Sysroot:
    """An OSTree sysroot: a directory (`--sysroot`) or the booted system's `/`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(os.fspath(path)))
        self._commit_roots: dict[str, Any] = {}

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
        repo = sysroot.repo
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
            if path == Path("/") and private_mounts:
                # On a booted system /sysroot is read-only; libostree makes a private mount namespace to write it.
                sysroot._sysroot.initialize_with_mount_namespace(None)
            sysroot._sysroot.load(None)
        except GLib.Error as e:
            raise _error(f"loading the sysroot {path}", e) from e
        return sysroot

    def system_id(self, *, create: bool) -> str:
        """This system's own id, kept in its repository's config: what its build images are tagged with, so that
        sysroots sharing one container storage never count or remove each other's images. "" when there is none
        yet and `create` is false."""
        config = self.repo.copy_config()
        try:
            return str(config.get_string(ORIGIN_GROUP, "system-id"))
        except GLib.Error:
            if not create:
                return ""
        value = uuid.uuid4().hex
        config.set_string(ORIGIN_GROUP, "system-id", value)
        try:
            self.repo.write_config(config)
        except GLib.Error as e:
            raise _error("recording the system id", e) from e
        return value

    @_wrap("reloading the sysroot")
    def reload(self) -> None:
        self._sysroot.load(None)

    @property
    def repo(self) -> OSTree.Repo:
        return self._sysroot.repo()

    @property
    def repo_path(self) -> Path:
        return self.path / "ostree" / "repo"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The sysroot lock (shared with ostree and every other tool using libostree); refuse when held."""
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
        if not acquired:
            raise LockedError(
                f"another process is changing the system at {self.path} (the sysroot lock is held)",
                hint="wait for the other `os` command to finish, then try again",
            )
        try:
            yield
        finally:
            self._sysroot.unlock()

    # --- deployments -------------------------------------------------------------------------------------

    def deployments(self) -> list[OSTree.Deployment]:
        return [d for d in self._sysroot.get_deployments() if d.get_osname() == STATEROOT]

    def all_deployments(self) -> list[OSTree.Deployment]:
        return list(self._sysroot.get_deployments())

    @property
    def booted(self) -> OSTree.Deployment | None:
        return self._sysroot.get_booted_deployment()

    @property
    def staged(self) -> OSTree.Deployment | None:
        return self._sysroot.get_staged_deployment()

    def default(self) -> OSTree.Deployment | None:
        deployments = self.deployments()
        return deployments[0] if deployments else None

    def merge_deployment(self) -> OSTree.Deployment | None:
        return self._sysroot.get_merge_deployment(STATEROOT)

    def deployment_dir(self, deployment: OSTree.Deployment) -> Path:
        return self.path / str(self._sysroot.get_deployment_dirpath(deployment))

    def origin(self, deployment: OSTree.Deployment) -> dict[str, str]:
        keyfile = deployment.get_origin()
        if keyfile is None or not keyfile.has_group(ORIGIN_GROUP):
            return {}
        keys = keyfile.get_keys(ORIGIN_GROUP)[0]
        return {k: keyfile.get_string(ORIGIN_GROUP, k) for k in keys}

    def kargs(self, deployment: OSTree.Deployment) -> list[str]:
        bootconfig = deployment.get_bootconfig()
        options = bootconfig.get("options") if bootconfig is not None else None
        return options.split() if options else []

    # --- commits -----------------------------------------------------------------------------------------

    @_wrap("reading a commit")
    def commit(self, checksum: str) -> Commit:
        _, variant, _ = self.repo.load_commit(checksum)
        metadata = variant.get_child_value(0).unpack()
        return Commit(
            checksum=checksum,
            timestamp=OSTree.commit_get_timestamp(variant),
            subject=variant.get_child_value(3).get_string(),
            metadata=metadata,
        )

    @_wrap("resolving a ref")
    def resolve(self, ref: str) -> str | None:
        _, checksum = self.repo.resolve_rev(ref, True)
        return checksum if checksum else None

    @_wrap("committing the tree")
    def write_commit(
        self,
        tree: Path,
        *,
        subject: str,
        metadata: Mapping[str, Any],
        ref: str,
        on_file: Callable[[int], None] | None = None,
    ) -> str:
        """Commit the directory `tree` in one transaction and point `ref` at it; return the checksum.

        The ref moves only when every object is written, so an interrupted commit leaves no ref and only
        staging leftovers that the next transaction or prune removes.
        """
        repo = self.repo
        count = [0]

        def commit_filter(_repo: Any, _path: str, _info: Any, *_user: Any) -> OSTree.RepoCommitFilterResult:
            count[0] += 1
            if on_file and count[0] % 500 == 0:
                on_file(count[0])
            return OSTree.RepoCommitFilterResult.ALLOW

        modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, commit_filter, None)
        # Ctrl-C must not raise inside the filter callback (PyGObject would print and swallow it): it cancels the
        # walk instead, and the interruption is raised once libostree has returned.
        cancellable = Gio.Cancellable()
        previous = signal.signal(signal.SIGINT, lambda *_: cancellable.cancel())
        repo.prepare_transaction(None)
        try:
            mtree = OSTree.MutableTree.new()
            repo.write_directory_to_mtree(Gio.File.new_for_path(os.fspath(tree)), mtree, modifier, cancellable)
            _, root = repo.write_mtree(mtree, cancellable)
            variant = GLib.Variant("a{sv}", {k: _variant(v) for k, v in metadata.items()})
            _, checksum = repo.write_commit(None, subject, None, variant, root, cancellable)
            repo.transaction_set_ref(None, ref, checksum)
            repo.commit_transaction(cancellable)
        except BaseException as e:
            repo.abort_transaction(None)
            if cancellable.is_cancelled():
                raise KeyboardInterrupt from e
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        return str(checksum)

    # --- changing deployments ----------------------------------------------------------------------------

    @_wrap("deploying")
    def deploy(
        self,
        checksum: str,
        *,
        origin: Mapping[str, str],
        kargs: Sequence[str],
        prepare: Callable[[Path], None] | None = None,
    ) -> OSTree.Deployment:
        """Deploy `checksum` as the new default, keeping every existing deployment.

        `prepare(deployment_dir)` may change the new deployment (e.g. its /etc) before it enters the boot
        configuration; if it fails, the half-made deployment is never referenced and cleanup removes it.
        """
        merge = self.merge_deployment()
        keyfile = GLib.KeyFile()
        keyfile.set_string("origin", "unconfigured-state", "Arkēs systems are updated with `os upgrade`")
        for key, value in origin.items():
            keyfile.set_string(ORIGIN_GROUP, key, value)
        if self.booted is not None:
            # A running system stages: OSTree finishes the deployment at shutdown, merging /etc as it is then,
            # so edits made after the upgrade still reach the new system.
            _, deployment = self._sysroot.stage_tree(STATEROOT, checksum, keyfile, merge, list(kargs), None)
            if prepare is not None:
                prepare(self.deployment_dir(deployment))
            self.reload()
            return deployment
        _, deployment = self._sysroot.deploy_tree(STATEROOT, checksum, keyfile, merge, list(kargs), None)
        if prepare is not None:
            prepare(self.deployment_dir(deployment))
        flags = OSTree.SysrootSimpleWriteDeploymentFlags.RETAIN
        self._sysroot.simple_write_deployment(STATEROOT, deployment, merge, flags, None)
        self.reload()
        return deployment

    @_wrap("unlocking")
    def unlock(self, deployment: OSTree.Deployment, hotfix: bool) -> None:
        state = OSTree.DeploymentUnlockedState.HOTFIX if hotfix else OSTree.DeploymentUnlockedState.DEVELOPMENT
        self._sysroot.deployment_unlock(deployment, state, None)
        self.reload()

    @_wrap("reading the commit's tree")
    def commit_file(self, checksum: str, path: str) -> Any:
        """The Gio.File of `path` inside a commit (an OSTree.RepoFile), or None when absent."""
        root = self._commit_roots.get(checksum)
        if root is None:
            # A commit never changes: its root is read once, however many of its files are asked for.
            _, root, _ = self.repo.read_commit(checksum, None)
            self._commit_roots[checksum] = root
        node = root.resolve_relative_path(path.lstrip("/"))
        return node if node.query_exists(None) else None

    @_wrap("reading the commit's tree")
    def commit_is_dir(self, checksum: str, path: str) -> bool | None:
        """Whether `path` inside a commit is a directory (not following links); None when absent."""
        node = self.commit_file(checksum, path)
        if node is None:
            return None
        kind = node.query_file_type(Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        return bool(kind == Gio.FileType.DIRECTORY)

    @_wrap("reading the commit's tree")
    def read_commit_file(self, checksum: str, path: str) -> bytes | None:
        """The content of the file `path` inside a commit, or None when absent. Read from its stream: Gio's
        load_contents asks a repository file's stream for file info it does not have, and newer GLib prints a
        critical warning for each file read that way."""
        node = self.commit_file(checksum, path)
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
    def write_deployments(self, deployments: Sequence[OSTree.Deployment]) -> None:
        """Make `deployments` (in boot order, the first the default) the whole list; others are removed."""
        self._sysroot.write_deployments(list(deployments), None)
        self.reload()

    @_wrap("pinning")
    def set_pinned(self, deployment: OSTree.Deployment, pinned: bool) -> None:
        self._sysroot.deployment_set_pinned(deployment, pinned)
        self.reload()

    @_wrap("cleaning up")
    def cleanup(self) -> tuple[int, int]:
        """Remove undeployed directories and unreferenced objects; return (objects, bytes) freed."""
        # prepare_cleanup removes undeployed directories and rewrites the ostree/N/M/I refs that hold every
        # deployment's commit, so a refs-only prune keeps exactly the deployments and our own refs.
        self._sysroot.prepare_cleanup(None)
        result = self.repo.prune(OSTree.RepoPruneFlags.REFS_ONLY, 0, None)
        _, _total, pruned, freed = result
        log.debug(f"pruned {pruned} objects, {freed} bytes")
        return int(pruned), int(freed)


def _variant(value: Any) -> GLib.Variant:
    if isinstance(value, GLib.Variant):
        return value
    if isinstance(value, str):
        return GLib.Variant("s", value)
    if isinstance(value, bool):
        return GLib.Variant("b", value)
    if isinstance(value, int):
        return GLib.Variant("t", value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return GLib.Variant("as", value)
    if isinstance(value, list) and all(isinstance(v, tuple) for v in value):
        return GLib.Variant("a(ss)", value)
    raise TypeError(f"no GVariant form for {value!r}")
