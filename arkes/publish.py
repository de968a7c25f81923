"""Publish a system: the image a deployment was built from, pushed to an OCI registry as an ordinary image that
carries its provenance as labels, for other machines to follow and for anyone to inspect or run.

The image pushed is the build image itself with its labels on top (and the package step's record, where `os`
wrote it into the tree: one small layer), so its layers are the ones the build made and cached: a one-line change
publishes the layers that change and the registry already holds the rest. Its tree is the commit's. Registries
that the containers' registries.conf declares insecure are reached as Podman reaches them, with the same
credentials (`podman login`).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import builder, images, log, podman, skopeo, trust
from arkes.build import PACKAGE_STAMP
from arkes.errors import ArkesError, UsageError
from arkes.results import Published
from arkes.skopeo import Signing

if TYPE_CHECKING:
    from arkes.ostree import Sysroot
    from arkes.records import Commit

PUBLISH_REPO = "localhost/arkes-publish"
LABELS = "org.arkes."
# REGISTRY/NAME[:TAG]: a registry host (a name with a dot, a port, or localhost), a path, an optional tag.
_REFERENCE = re.compile(
    r"(?P<registry>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+|:[0-9]+)|localhost(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
    r"/(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?"
)


def reference(given: str) -> str:
    """A registry reference as `os publish` takes it (`docker://` may precede it); a missing tag is `latest`."""
    ref = given.removeprefix("docker://")
    match = _REFERENCE.fullmatch(ref)
    if match is None:
        raise UsageError(
            f"{given} is not a registry reference",
            hint="give REGISTRY/NAME[:TAG], e.g. registry.example.com/fleet/system:stable or 127.0.0.1:5000/system:1",
        )
    return ref if match.group("tag") else f"{ref}:latest"


def provenance(commit: Commit) -> dict[str, str]:
    """What a published image says of itself: where it came from and what it holds (its commit's record)."""
    m = commit.metadata
    return {
        f"{LABELS}version": m.version,
        f"{LABELS}commit": commit.checksum,
        f"{LABELS}input-hash": m.input_hash,
        f"{LABELS}base-image": m.base_image,
        f"{LABELS}base-digest": m.base_digest,
        f"{LABELS}systemfile-sha256": m.systemfile_sha256,
        f"{LABELS}kernel": m.kernel,
        f"{LABELS}tool-version": m.tool_version,
        f"{LABELS}packages": " ".join(f"{name}={version}" for name, version in m.packages),
        "org.opencontainers.image.version": m.version,
        "org.opencontainers.image.title": "Arkēs",
    }


def publish(
    sysroot: Sysroot, ref: str, *, index: int = 0, signing: Signing | None = None, rollout: int | None = None
) -> Published:
    """Push the system of deployment `index` (the default: 0) to `ref`, signed by `signing` where given, for
    `rollout` percent of the fleet where given; return what was published."""
    target = reference(ref)
    if signing is not None and not signing.key.is_file():
        raise UsageError(f"{signing.key}: no such key file", hint="make a key pair with `os keygen PREFIX`")
    deployments = sysroot.deployments()
    if not deployments:
        raise ArkesError("there is no deployment to publish", hint="`os install` or `os upgrade` makes one")
    if not 0 <= index < len(deployments):
        raise UsageError(f"there is no deployment {index}: `os status` lists {len(deployments)}")
    commit = sysroot.commit(deployments[index].checksum)
    built = podman.build_tag(commit.metadata.input_hash, sysroot.system_id(create=False))
    if podman.image_info(built) is None:
        raise ArkesError(
            f"the image version {commit.version} was built from is not in this machine's container storage ({built})",
            hint="publish from the machine that built it, or build it again here with `os build` "
            "(the same inputs make the same system)",
        )
    local = f"{PUBLISH_REPO}:{commit.checksum[:16]}"
    with tempfile.TemporaryDirectory(prefix="arkes-publish-") as tmp, log.step("label"):
        lines = [f"FROM {built}"]
        # The package step's record, where `os` wrote it into the tree rather than a step into the image (see
        # build.build): with it, the image's tree is the commit's, file for file.
        stamp = sysroot.read_commit_file(commit.checksum, PACKAGE_STAMP)
        if stamp is not None:
            (Path(tmp) / "package-state").write_bytes(stamp)
            (Path(tmp) / "package-state").chmod(0o644)
            lines.append(f"COPY package-state /{PACKAGE_STAMP}")
        containerfile = Path(tmp) / "Containerfile"
        containerfile.write_text("\n".join(lines) + "\n")
        the_builder = builder.resolve(images.BASE, images.cache_dir())
        builder.build(the_builder, containerfile, Path(tmp), local, labels=provenance(commit))
    if rollout is not None:
        # Before the image: no machine may see it without the rollout that governs it.
        from arkes import rollout as waves

        waves.write(target, commit.checksum, rollout)
    try:
        digest = push(local, target, signing)
    finally:
        podman.untag([local])
    signed = str(signing.key) if signing is not None else ""
    m = commit.metadata
    return Published(target, digest, commit.version, commit.checksum, m.input_hash, signed, rollout)


def push(local: str, target: str, signing: Signing | None = None) -> str:
    """Push the local image to the registry reference `target`, with a sigstore signature stored next to it in the
    registry where `signing` is given; return the digest of the manifest pushed."""
    with tempfile.TemporaryDirectory(prefix="arkes-push-") as tmp, log.step("push") as progress:
        (Path(tmp) / "attachments.yaml").write_text(trust.attachments(target))
        return skopeo.push(local, target, Path(tmp), podman.blob_progress(progress), signing)
