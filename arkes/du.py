"""`os du`: where the disk went. The repository, each deployment's own and shared bytes, builds, what prune frees.

Sizes are allocated bytes (blocks × 512), as `du` counts them, and every object is counted once however many
deployments hardlink it: the per-deployment figures plus the shared and unreferenced ones add up to the objects
directory as `du` measures it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import podman
from arkes.names import BUILD_REF
from arkes.results import DeploymentUsage, Usage

if TYPE_CHECKING:
    from arkes.ostree import Sysroot


def allocated(path: Path) -> int:
    st = path.lstat()
    return st.st_blocks * 512


def tree_bytes(root: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Allocated bytes of a tree, each inode once (as du does)."""
    seen = set() if seen is None else seen
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    st = root.lstat()
    if (st.st_dev, st.st_ino) not in seen:
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


def measure(sysroot: Sysroot, keep: int = 2) -> Usage:
    repo = sysroot.repo_path
    objects_dir = repo / "objects"
    sizes: dict[tuple[str, str], int] = {}
    for prefix in objects_dir.iterdir():
        if not prefix.is_dir():
            continue
        for obj in prefix.iterdir():
            stem, _, suffix = obj.name.partition(".")
            sizes[(prefix.name + stem, suffix)] = allocated(obj)
    directory_blocks = tree_bytes(objects_dir) - sum(sizes.values())

    deployments = sysroot.deployments()
    commits = [d.checksum for d in deployments]
    reach_of = {c: sysroot.reachable_objects(c) for c in set(commits)}
    counts: Counter[tuple[str, str]] = Counter(o for objects in reach_of.values() for o in objects)
    uses = Counter(commits)
    etc_seen: set[tuple[int, int]] = set()
    etc_sizes = [tree_bytes(sysroot.deployment_dir(d) / "etc", etc_seen) for d in deployments]
    rows = []
    unique_total = 0
    for index, commit in enumerate(commits):
        objects = reach_of[commit]
        total = sum(sizes.get(o, 0) for o in objects)
        # Two deployments of one commit share all of it.
        unique = sum(sizes.get(o, 0) for o in objects if counts[o] == 1) if uses[commit] == 1 else 0
        unique_total += unique
        rows.append(DeploymentUsage(index, commit, unique + etc_sizes[index], total - unique))
    reached = set().union(*reach_of.values())
    shared_total = sum(sizes.get(o, 0) for o in reached) - unique_total
    other = sum(size for o, size in sizes.items() if o not in reached) + directory_blocks

    booted = sysroot.booted
    prunable = [i for i, d in enumerate(deployments[keep:], start=keep) if not d.pinned and not d.same(booted)]
    kept_objects: set[tuple[str, str]] = set()
    built = sysroot.resolve(BUILD_REF)
    if built:
        kept_objects |= reach_of.get(built) or sysroot.reachable_objects(built)  # the last build keeps its ref
    for i, commit in enumerate(commits):
        if i not in prunable:
            kept_objects |= reach_of[commit]
    # Image layers (see arkes.layers): what only they hold, and which of them prune keeps (those kept systems and
    # the last build were made of).
    layer_commits = sysroot.layers()
    layer_reach = {d: sysroot.reachable_objects(c) for d, c in layer_commits.items()}
    held = set().union(*layer_reach.values()) - reached
    kept_layers = {
        digest for i, c in enumerate(commits) if i not in prunable for digest in sysroot.commit(c).metadata.layers
    }
    if built:
        kept_layers |= set(sysroot.commit(built).metadata.layers)
    for digest in kept_layers & set(layer_reach):
        kept_objects |= layer_reach[digest]
    prune = sum(size for o, size in sizes.items() if o not in kept_objects) + sum(etc_sizes[i] for i in prunable)

    live = {sysroot.commit(d.checksum).metadata.input_hash for i, d in enumerate(deployments) if i not in prunable}
    _, freed = stale_build_images(sysroot, live)
    prune_images = podman.exclusive_bytes(freed)
    return Usage(
        repo_bytes=tree_bytes(repo),
        objects_bytes=sum(sizes.values()) + directory_blocks,
        shared_bytes=shared_total,
        other_bytes=other,
        deployments=tuple(rows),
        etc_bytes=sum(etc_sizes),
        podman_bytes=podman.storage_bytes(),
        prune_bytes=prune,
        prune_image_bytes=prune_images,
        layers=len(layer_commits),
        layer_bytes=sum(sizes.get(o, 0) for o in held),
    )


def stale_build_images(sysroot: Sysroot, live_hashes: set[str]) -> tuple[list[str], list[str]]:
    """This system's build images that no kept deployment came from: the names to remove (only this system's own
    tags, see podman.build_tag), and the images that removing them frees (no other name refers to them)."""
    system_id = sysroot.system_id(create=False)
    if not system_id:
        return [], []
    live = {podman.build_tag(h, system_id) for h in live_hashes}
    suffix = podman.build_tag("", system_id).rsplit(":", 1)[-1]
    names: list[str] = []
    freed: list[str] = []
    for image in podman.list_images(f"{podman.BUILD_REPO}:*"):
        raw = image.get("Names")
        all_names = [str(n) for n in raw] if isinstance(raw, list) else []
        ours = [n for n in all_names if n.endswith(suffix) and n not in live]
        if not ours:
            continue
        names += ours
        if set(all_names) == set(ours):
            freed.append(str(image.get("Id")))
    return names, freed
