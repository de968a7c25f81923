"""Systemfile → image → rewritten, checked tree → OSTree commit, with the input hash that makes no-op upgrades free.

The input hash covers everything a build reads: the Systemfile, every file of its context, the digest of every
base image, the kernel arguments, the tool's version and the package state (the release of every package
repository the image uses, see arkes.packages). It is stored in each commit; equal hashes mean an
equal system, so `os upgrade` can skip the build entirely.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import __version__, builder, images, layers, lint, log, packages, podman, run, tree
from arkes.errors import ArkesError, UsageError
from arkes.names import BUILD_REF
from arkes.records import Metadata

if TYPE_CHECKING:
    from concurrent.futures import Future

    # The grammar is loaded only by what parses a Systemfile, so that `os status` does not pay for it.
    from arkes import systemfile
    from arkes.ostree import Sysroot
    from arkes.records import Commit


@dataclass(frozen=True)
class Plan:
    """What a build would read, resolved without building anything."""

    systemfile: systemfile.Systemfile
    context: Path
    kargs: tuple[str, ...]
    base_image: str
    base_digests: dict[str, str]
    input_hash: str
    manifest: tuple[tuple[str, str], ...]
    package_state: packages.State = dataclasses.field(default_factory=lambda: packages.State({}))
    # The fingerprint of packages a build brought up to date at this package state (see builderfile.update_step):
    # a hint that spares the repositories a question, no input of the build.
    current_packages: str = ""

    @property
    def base_digest(self) -> str:
        return self.base_digests.get(self.base_image, "")

    def with_packages(self, state: packages.State) -> Plan:
        """The same plan against another package state (a new input, so a new input hash)."""
        ihash = input_hash(self.systemfile.text.encode(), self.manifest, self.base_digests, self.kargs, state.digest)
        return dataclasses.replace(self, package_state=state, input_hash=ihash)


@dataclass(frozen=True)
class Result:
    checksum: str
    version: str
    plan: Plan
    image_kargs: tuple[str, ...]


def _context_files(context: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(context):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            files.append(Path(dirpath) / name)
    return files


# Files of /etc/system that configure the tool, not the system: no input of a build.
NOT_INPUTS = frozenset({"updates.conf"})


def context_manifest(context: Path) -> list[tuple[str, str]]:
    """Every file of the build context: (relative path, `F mode sha256` or `L target`), sorted."""
    manifest = []
    for path in _context_files(context):
        relative = path.relative_to(context).as_posix()
        if relative in NOT_INPUTS:
            continue
        if path.is_symlink():
            manifest.append((relative, f"L {os.readlink(path)}"))
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            manifest.append((relative, f"F {path.stat().st_mode & 0o7777:o} {digest}"))
    return manifest


def input_hash(
    sf_text: bytes,
    manifest: Sequence[tuple[str, str]],
    base_digests: dict[str, str],
    kargs: Sequence[str],
    package_state: str = "",
) -> str:
    digest = hashlib.sha256(f"arkes-inputs 3\ntool {__version__}\nrewrite {tree.REVISION}\n".encode())
    digest.update(b"systemfile\n" + hashlib.sha256(sf_text).digest())
    for relative, entry in manifest:
        digest.update(f"{relative}\0{entry}\n".encode())
    for ref in sorted(base_digests):
        digest.update(f"base {ref} {base_digests[ref]}\n".encode())
    digest.update(("kargs " + " ".join(kargs) + "\n").encode())
    digest.update(f"packages {package_state}\n".encode())
    return digest.hexdigest()


def plan(
    path: Path,
    kargs: Sequence[str],
    *,
    ensure_images: bool = True,
    registry_etc: Path | None = None,
    built_on: Mapping[str, str] | None = None,
) -> Plan:
    """Validate the Systemfile, make sure its base images exist, and compute the input hash (without a package
    state: `Plan.with_packages` adds it). With `registry_etc` (the /etc whose policy.json decides what is trusted),
    base images from a registry are brought to what their registry names now (see `fetched`); `built_on` names
    the digests the current system was built on, which an offline build keeps where this machine has them."""
    context = path.parent
    from arkes import systemfile

    inspected: dict[str, dict[str, object] | None] = {}

    def image_env(ref: str) -> dict[str, str] | None:
        if ref not in inspected:
            # Ours are checked against their inputs below, which reads what they are built from: asked at once.
            ours = images.is_ours(ref) and ensure_images
            inspected.update(images.inspect(ref) if ours else {ref: podman.image_info(ref)})
        image = inspected[ref]
        return podman.image_env(image) if image is not None else None

    sf = systemfile.load(path, context, image_env=image_env)
    digests: dict[str, str] = {}
    for ref in sf.external_images:
        if images.is_ours(ref) and ensure_images:
            ensured = images.ensure(ref, known=inspected)
            if ensured.rebuilt:
                for mine in images.OURS:
                    inspected.pop(mine, None)
            elif ensured.image is not None:
                inspected[ref] = ensured.image
        image = inspected[ref] if ref in inspected else podman.image_info(ref)
        line = next((s.line for s in sf.stages if s.base == ref), 1)
        if registry_etc is not None and from_registry(ref):
            image, digests[ref] = fetched(ref, image, registry_etc, f"{path}:{line}", (built_on or {}).get(ref, ""))
        if image is None:
            raise UsageError(
                f"{path}:{line}: the base image {ref} does not exist",
                hint=f"build or pull it first (podman images lists what exists); {images.BASE} is built on demand",
            )
        digests.setdefault(ref, podman.image_digest(ref, image))
    manifest = context_manifest(context)
    ihash = input_hash(sf.text.encode(), manifest, digests, kargs)
    return Plan(sf, context, tuple(kargs), sf.base_image, digests, ihash, tuple(manifest))


def from_registry(ref: str) -> bool:
    """Whether `ref` names an image in a registry by its full name (REGISTRY/NAME...), not one of this machine."""
    host = ref.partition("/")[0]
    return "/" in ref and host != "localhost" and ("." in host or ":" in host)


def fetched(
    ref: str, image: dict[str, object] | None, etc: Path, where: str, built_on: str = ""
) -> tuple[dict[str, object] | None, str]:
    """The base image `ref` as its registry names it now, and that digest: pulled (verified as the policy in `etc`
    says) when this machine's copy is missing or another; this machine's copy, with a warning, when the registry
    cannot be reached."""
    from arkes import skopeo, trust

    pinned = "@" in ref
    if pinned and image is not None:
        return image, ref.partition("@")[2]
    try:
        remote = ref.partition("@")[2] if pinned else podman.registry_digest(ref)
    except skopeo.Refused:
        raise
    except ArkesError as e:
        if image is None:
            raise UsageError(
                f"{where}: the base image {ref} is not on this machine and its registry cannot be reached: {e.message}"
            ) from None
        log.warn(f"the registry of {ref} cannot be reached ({e.message}); building on this machine's copy")
        known = podman.known_digests(ref, image)
        return image, built_on if built_on in known else known[-1]
    if image is not None and remote in podman.known_digests(ref, image):
        return image, remote
    log.info(f"base image {ref}: the registry names {remote}, pulling it")
    with trust.for_copy(etc, ref) as policy, log.step("pull") as progress:
        skopeo.pull(f"{trust.repository(ref)}@{remote}", ref, policy, etc, podman.blob_progress(progress))
    return podman.image_info(ref), remote


PACKAGE_STAMP = "usr/lib/arkes/package-state"  # the fingerprint of packages update_packages left up to date


def current_packages(sysroot: Sysroot, commit: Commit, p: Plan) -> Plan:
    """`p` with the hint that `commit`'s packages are up to date at `p`'s package state, when they are: it was
    built at that state, and its package step recorded the fingerprint of what it left up to date."""
    if not p.package_state.digest or commit.metadata.package_state != p.package_state.digest:
        return p
    recorded = (sysroot.read_commit_file(commit.checksum, PACKAGE_STAMP) or b"").decode(errors="replace").split()
    if len(recorded) == 1:
        return dataclasses.replace(p, current_packages=recorded[0])
    return p


def image_release_urls(ref: str) -> list[str]:
    """The package repositories an image's apt is configured with (see packages.release_urls)."""
    with podman.mounted_container(ref) as root:
        return packages.release_urls(root / "etc/apt")


def _settle_packages(p: Plan, root: Path) -> Plan:
    """The plan against the repositories the built image really uses: the Systemfile may add or drop some."""
    urls = set(packages.release_urls(root / "etc/apt"))
    known = dict(p.package_state.indexes)
    if urls == set(known):
        return p
    fetched = packages.fetch_state(urls - set(known))
    for problem in fetched.unreachable:
        log.warn(f"cannot read a package repository the image uses: {problem}")
    indexes = {url: sha for url, sha in (known | fetched.indexes).items() if url in urls}
    return p.with_packages(packages.State(indexes, fetched.unreachable))


def commit_entries(root: Path) -> int:
    """How many times the commit's filter is called for `root`: once per file and link, twice per directory (its
    entry, then its metadata), once for the root itself."""
    total = 1
    for path, dirs, files in os.walk(root):
        total += len(files) + sum(1 if os.path.islink(os.path.join(path, d)) else 2 for d in dirs)
    return total


def next_version(sysroot: Sysroot, today: datetime.date | None = None) -> str:
    """YYYYMMDD.N: N counts the commits made today, over every deployment and the last build."""
    day = (today or datetime.datetime.now(datetime.UTC).date()).strftime("%Y%m%d")
    checksums = {d.checksum for d in sysroot.all_deployments()}
    built = sysroot.resolve(BUILD_REF)
    if built:
        checksums.add(built)
    serial = 0
    for checksum in checksums:
        version = sysroot.commit(checksum).version
        prefix, _, number = version.partition(".")
        if prefix == day and number.isdigit():
            serial = max(serial, int(number))
    return f"{day}.{serial + 1}"


def build(
    sysroot: Sysroot, p: Plan, *, secrets: Mapping[str, Path] | None = None, allow_secrets: Collection[str] = ()
) -> Result:
    """Build the image, rewrite and check its tree, and commit it (moving BUILD_REF). Deploys nothing.

    `secrets` (id → file) reach `RUN --mount=type=secret` only: they are in no layer and no input of the hash.
    `allow_secrets` names the private keys (by image path) the tree may hold; the commit records them.

    Where the plan says which packages are up to date at its package state (`current_packages`), the image is
    built without the package step first: when its packages and apt's configuration are those, apt would find
    nothing to do, and the step's record is written into the tree instead; otherwise the step is added (every
    line before it comes from the cache) and the image built again.
    """
    annotations = {
        "org.arkes.systemfile-sha256": hashlib.sha256(p.systemfile.text.encode()).hexdigest(),
        "org.arkes.base-image": p.base_image,
        "org.arkes.base-digest": p.base_digest,
    }
    for warning in p.systemfile.state_warnings:
        log.warn(warning)
    tag = podman.build_tag(p.input_hash, sysroot.system_id(create=True))
    the_builder = builder.resolve(images.BASE, images.cache_dir())
    if not the_builder.native and images.BASE not in p.base_digests:
        images.ensure(images.BASE)  # the builder itself, for a Systemfile FROM some other image
    package_step = not p.current_packages
    # The image's layers are asked for as soon as it is tagged, while the builder's container goes away.
    found: list[Future[list[layers.Layer] | None]] = []
    while True:
        found.clear()
        _build_image(
            the_builder,
            p,
            tag,
            annotations,
            secrets,
            package_step=package_step,
            on_tagged=lambda: found.append(run.in_background(layers.of_image, tag)),
        )
        with layers.checkout(sysroot, tag, images.checks_dir(), found[-1] if found else None) as checkout:
            settled = _settle_packages(p, checkout.root)
            if not package_step and (settled is not p or packages.fingerprint(checkout.root) != p.current_packages):
                log.info("package step: the packages or apt's configuration changed, apt is asked")
                package_step = True
                continue
            if not package_step:
                stamp = checkout.root / PACKAGE_STAMP
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.unlink(missing_ok=True)  # never written into: it may be a hard link into the repository
                stamp.write_text(p.current_packages + "\n")
                stamp.chmod(0o644)  # as the step writes it
                log.info("package step: these packages were brought up to date at this package state already")
            if settled is not p:
                # Named after what it was built against, so that the next upgrade finds it up to date.
                podman.tag(tag, podman.build_tag(settled.input_hash, sysroot.system_id(create=True)))
                podman.untag([tag])
                p = settled
            checksum, version, image_kargs = commit_tree(sysroot, checkout, recorded(p, annotations), allow_secrets)
            break
    log.info(f"committed {checksum[:12]} (version {version})")
    return Result(checksum, version, p, tuple(image_kargs))


def _build_image(
    the_builder: builder.Builder,
    p: Plan,
    tag: str,
    annotations: Mapping[str, str],
    secrets: Mapping[str, Path] | None,
    *,
    package_step: bool,
    on_tagged: Callable[[], None],
) -> None:
    with tempfile.TemporaryDirectory(prefix="arkes-build-") as tmp, log.step("build") as progress:
        # The builder reads the Systemfile in the syntax it knows (same lines, same result: see builderfile).
        from arkes import builderfile

        translated = builderfile.translate(
            p.systemfile,
            p.context,
            Path(tmp) / "contexts",
            package_state=p.package_state.digest if package_step else "",
            current_packages=p.current_packages,
        )
        containerfile = Path(tmp) / "Systemfile"
        containerfile.write_text(translated.text)
        builder.build(
            the_builder,
            containerfile,
            p.context,
            tag,
            annotations=annotations,
            secrets=secrets,
            contexts=translated.contexts,
            on_step=lambda fraction, label: progress.update(fraction, label[:90]),
            on_tagged=on_tagged,
            nice=True,
        )


def recorded(p: Plan, annotations: Mapping[str, str]) -> Metadata:
    """What a commit of the plan's build records of its inputs (commit_tree adds what it finds in the tree)."""
    return Metadata(
        input_hash=p.input_hash,
        base_image=p.base_image,
        base_digest=p.base_digest,
        systemfile_sha256=annotations["org.arkes.systemfile-sha256"],
        context=tuple(p.manifest),
        machine_kargs=tuple(p.kargs),
        package_state=p.package_state.digest,
        package_indexes=tuple(sorted(p.package_state.indexes.items())),
    )


def commit_tree(
    sysroot: Sysroot, checkout: layers.Tree, inputs: Metadata, allow_secrets: Collection[str]
) -> tuple[str, str, list[str]]:
    """Rewrite and check the tree of a checkout, and commit it (moving BUILD_REF); return its checksum, version
    and kernel arguments. `inputs`: what the commit records of where the image came from; its version, when it
    has one (a published image's), else the next of this machine."""
    version = inputs.version or next_version(sysroot)
    root = checkout.root
    with log.step("rewrite"):
        stripped = tree.rewrite(root)
    if stripped:
        log.info(
            f"removed {len(stripped)} identity file(s) from the image (each machine makes its own on its first "
            f"boot): {', '.join(stripped)}"
        )
    with log.step("check"):
        allowed = lint.check(root, allow_secrets, cache=images.checks_dir(), keys=checkout.keys)
    for path in allowed:
        log.warn(f"the image carries the private key {path}, allowed by --allow-secret")
    packages_ = tree.packages(root)
    image_kargs = tree.image_kargs(root)
    kernels = tree.kernels(root)
    metadata = dataclasses.replace(
        inputs,
        version=version,
        packages=tuple(packages_),
        kargs=tuple(image_kargs),
        tool_version=__version__,
        kernel=kernels[-1].version if kernels else "",
        allowed_secrets=tuple(allowed),
        layers=checkout.layers,
    )
    total = commit_entries(root)
    with log.step("commit") as progress:
        checksum = sysroot.write_commit(
            root,
            subject=f"Arkēs {version}",
            metadata=metadata,
            ref=BUILD_REF,
            on_file=lambda n: progress.update(n / max(total, 1), f"{n}/{total} files"),
            known=checkout.known,
            refs=checkout.refs,
        )
    return checksum, version, image_kargs
