"""Layer-aware commits: each image layer is committed to OSTree once, keyed by its digest, and a system's tree is
checked out from its layers' commits, every file a hard link into the repository, for the rewrite and the gate.
The commit of that tree takes every file still linked to an object without reading it again: an upgrade reads and
hashes only the layers that changed and what the rewrite wrote. The tree is the one a full commit of the image
makes, file for file (tests/integration/test_layers.py compares the two).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import lint, log, podman, run, tree
from arkes.names import layer_ref

if TYPE_CHECKING:
    from concurrent.futures import Future

    from arkes.ostree import Checkout, Sysroot

SCRATCH_PREFIX = "arkes-tree-"


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256:... of the layer's uncompressed content (the image's RootFS.Layers)
    diff: Path  # its directory in container storage


def of_image(ref: str) -> list[Layer] | None:
    """The layers of an image, bottom first; None when its storage is not the overlay driver's."""
    image = podman.inspect_image(ref)
    driver = image.get("GraphDriver")
    rootfs = image.get("RootFS")
    if not isinstance(driver, dict) or driver.get("Name") != "overlay" or not isinstance(rootfs, dict):
        return None
    data = driver.get("Data")
    digests = rootfs.get("Layers")
    if not isinstance(data, dict) or not isinstance(digests, list):
        return None
    dirs = [d for d in str(data.get("LowerDir", "")).split(":") if d][::-1]
    if data.get("UpperDir"):
        dirs.append(str(data["UpperDir"]))
    if len(dirs) != len(digests) or not all(Path(d).is_dir() for d in dirs):
        return None
    return [Layer(str(digest), Path(d)) for digest, d in zip(digests, dirs, strict=True)]


@dataclass(frozen=True)
class Tree:
    """An image's root filesystem, writable, for the rewrite; `known` says which files commit need not read.

    Directories the rewrite leaves as they are (tree.untouched) may be empty in it: commit takes them from the
    layers, and `keys` are the private keys they hold, for the gate (lint.check)."""

    root: Path
    known: Checkout | None
    layers: tuple[str, ...]  # the digests of the layers it was checked out from
    refs: dict[str, str]  # the refs of layers imported for it (set with the system commit), to their commits
    keys: tuple[lint.PrivateKey, ...] = ()


@contextmanager
def checkout(
    sysroot: Sysroot, ref: str, cache: Path | None = None, found: Future[list[Layer] | None] | None = None
) -> Iterator[Tree]:
    """The tree of image `ref`: checked out from its layers' commits (importing the layers not committed yet),
    or, where its storage is not the overlay driver's, a mounted container of it. Removed afterwards. `cache`:
    where what was read from each layer (its private keys) is kept (lint.layer_keys); `found`: of_image(ref),
    asked already."""
    layers = found.result() if found is not None else of_image(ref)
    if layers is None:
        log.debug(f"{ref}: not in overlay storage, committing its mounted tree")
        with podman.mounted_container(ref) as root:
            yield Tree(root, None, (), {})
        return
    scratch = sysroot.scratch_dir()
    _remove_later(_stale(scratch))
    commits = []
    imported: dict[str, str] = {}
    with log.step("layers") as progress:
        for i, layer in enumerate(layers):
            commit = sysroot.layer_commit(layer.digest)
            if commit is None:
                label = f"importing layer {i + 1}/{len(layers)} ({layer.digest.removeprefix('sha256:')[:12]})"
                progress.update(i / len(layers), label)
                commit = sysroot.import_layer(layer.digest, layer.diff, tree.EMPTIED)
                imported[layer_ref(layer.digest)] = commit
            commits.append(commit)
    log.info(f"layers: {len(layers)}, {len(imported)} imported, {len(layers) - len(imported)} already committed")
    work = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=scratch))
    try:
        with log.step("checkout"):
            known = sysroot.checkout_layers(commits, work / "root", tree.untouched)
            keys = _grafted_keys(sysroot, layers, commits, known, cache)
        yield Tree(work / "root", known, tuple(layer.digest for layer in layers), imported, keys)
    finally:
        _remove_later([work])


def _grafted_keys(
    sysroot: Sysroot, layers: list[Layer], commits: list[str], known: Checkout, cache: Path | None
) -> tuple[lint.PrivateKey, ...]:
    """The private keys in the directories the checkout left empty: of the keys each layer holds, those whose
    file the union has as that layer made it (not removed or replaced by a layer above)."""
    prefixes = tuple(relative + "/" for relative in known.grafted)
    found = {}
    for layer, commit in zip(layers, commits, strict=True):
        for key in lint.layer_keys(layer.diff, layer.digest, cache):
            relative = key.path.removeprefix("/")
            if relative.startswith(prefixes) and (
                sysroot.file_checksum(known.union, relative) == sysroot.file_checksum(commit, relative)
            ):
                found[key.path] = key
    return tuple(found[path] for path in sorted(found))


def _stale(scratch: Path) -> list[Path]:
    """Trees of earlier builds: builds hold the sysroot's lock, so no other one is using them."""
    return sorted(scratch.glob(SCRATCH_PREFIX + "*"))


def _remove_later(trees: list[Path]) -> None:
    """Remove trees of tens of thousands of links (seconds on a slow machine) beside the work that follows, never
    before it, at the lowest priority: `rm` goes on when `os` is done, and whatever a kill or a reboot leaves is
    removed by the next build, or by `os prune` (remove_stale), before anything can need their space."""
    if trees:
        argv = ["nice", "-n", "19", "ionice", "-c", "3", "rm", "-rf", "--one-file-system", *map(str, trees)]
        threading.Thread(target=run.run, args=(argv,), kwargs={"check": False}, daemon=True).start()


def remove_stale(sysroot: Sysroot) -> None:
    """Remove what earlier builds left of their trees (they keep objects from being pruned); now, not later."""
    for tree_dir in _stale(sysroot.scratch_dir()):
        shutil.rmtree(tree_dir, ignore_errors=True)
