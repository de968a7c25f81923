"""Follow a published system: a machine that `os switch`ed to a registry image takes its updates from there.

`os switch REF` pulls the image (only the layers this machine's storage lacks), makes its tree the way a build
does — the same rewrite and the same gate, from the image's layers — and deploys it as the new default, with
REF and the image's digest in the deployment's origin. From then on `os upgrade` pulls REF again and deploys
what changed, `os checkupdates` asks the registry for REF's digest without pulling, and `os status` names the
source of each deployment. The machine's /etc/system/Systemfile stays where it is: `os switch --local` builds
from it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from arkes import archive, build, builder, deploy, images, layers, log, podman, rollout, run, skopeo, trust
from arkes.errors import ArkesError, CommandError
from arkes.names import ORIGIN_DIGEST, ORIGIN_SOURCE
from arkes.publish import LABELS, reference
from arkes.records import Deployment, Metadata
from arkes.results import Outcome
from arkes.target import Target


@dataclass(frozen=True)
class Pulled:
    ref: str
    image_id: str
    digest: str
    labels: dict[str, str]


def source(deployment: Deployment | None) -> str:
    """What a deployment follows: a registry reference, or "" for the machine's own Systemfile."""
    return deployment.origin_value(ORIGIN_SOURCE) if deployment is not None else ""


def pull(ref: str, digest: str, etc: Path, key: str | None = None) -> Pulled:
    """Pull the image `ref` names by its `digest` (the layers this machine lacks), verified as the policy of the
    machine whose /etc is `etc` requires (and, with `key`, signed by it), and read what it is."""
    pinned = f"{ref.rpartition(':')[0]}@{digest}"
    with trust.for_copy(etc, ref, key) as policy, log.step("pull") as progress:
        skopeo.pull(pinned, pinned, policy, etc, podman.blob_progress(progress))
    image = podman.inspect_image(pinned)
    return Pulled(ref, str(image["Id"]), digest, podman.image_labels(pinned, image))


@dataclass(frozen=True)
class Remote:
    """What a registry names under a reference now: the image's digest and the commit its label records."""

    digest: str
    commit: str


def remote(ref: str) -> Remote:
    """What REF names in its registry now, asked without pulling anything (its manifest and configuration)."""
    template = f'{{{{.Digest}}}} {{{{index .Labels "{LABELS}commit"}}}}'
    argv = [*skopeo.on_host(), "inspect", "--format", template, f"docker://{ref}"]
    try:
        answer = run.run(argv, what=f"asking the registry for {ref}").stdout
    except CommandError as e:
        raise skopeo.explained(e, f"asking the registry for {ref}") from None
    digest, _, commit = answer.strip().partition(" ")
    return Remote(digest, commit.strip() if commit.strip() != "<no value>" else "")


def upgrade(
    target: Target,
    ref: str,
    *,
    deploy_it: bool = True,
    allow_secrets: Collection[str] = (),
    require_key: Path | None = None,
    ignore_rollout: bool = False,
) -> Outcome:
    """Deploy what `ref` names now, unless the default deployment is that already or the image's rollout does not
    admit this machine yet (unless `ignore_rollout`). With `require_key` (a public key file), only an image signed
    by it is taken, and the machine requires that signature from then on. The caller holds the lock."""
    if archive.is_archive(ref):
        gpg_key = archive.gpg_public_key(require_key) if require_key is not None else None
        return archive.upgrade(target, ref, deploy_it=deploy_it, require_key=gpg_key)
    sysroot = target.sysroot
    ref = reference(ref)
    etc = target.system_etc
    key = trust.read_public_key(require_key) if require_key is not None else None
    if not builder.is_arkes_system():
        builder.host_storage()
    # The digest first, then the image by that digest: what is deployed is exactly what the registry named.
    try:
        named = remote(ref)
    except skopeo.Refused:
        raise
    except ArkesError as e:
        raise ArkesError(f"pulling {ref}: {e.message}", hint=e.hint) from None
    digest = named.digest
    default = sysroot.default()
    if default is not None and source(default) == ref and default.origin_value(ORIGIN_DIGEST) == digest:
        current = sysroot.commit(default.checksum)
        if key is not None:
            pull(ref, digest, etc, key)  # what runs now must pass the requirement too
            with trust.installed(etc, ref, key) as required:
                log.info(f"this machine now requires of {trust.repository(ref)}: {required.describe()}")
        log.info(f"the system is up to date: version {current.version} is {ref} ({digest})")
        return Outcome(current.checksum, current.version, deployed=False, up_to_date=True)
    if not ignore_rollout:
        governing = rollout.governing(ref, named.commit)
        machine_wave = rollout.wave(etc) if governing is not None else 0
        if governing is not None and not governing.admits(machine_wave) and default is not None:
            current = sysroot.commit(default.checksum)
            log.info(
                f"{ref} names a new system ({digest}) that rolls out to {governing.percent} % of the fleet; this "
                f"machine's wave is {machine_wave}, so it waits (`os upgrade --ignore-rollout` takes it now)"
            )
            return Outcome(current.checksum, current.version, deployed=False, up_to_date=False, held=True)
    pulled = pull(ref, digest, etc, key)
    labels = pulled.labels
    if not labels.get(f"{LABELS}commit"):
        raise ArkesError(
            f"{ref} is not a published Arkēs system (it has no {LABELS}commit label)",
            hint="follow what `os publish` pushed",
        )
    inputs = Metadata(
        version=labels.get(f"{LABELS}version", ""),
        input_hash=labels.get(f"{LABELS}input-hash", ""),
        base_image=labels.get(f"{LABELS}base-image", ""),
        base_digest=labels.get(f"{LABELS}base-digest", ""),
        systemfile_sha256=labels.get(f"{LABELS}systemfile-sha256", ""),
        machine_kargs=target.kargs,
    )
    with layers.checkout(sysroot, pulled.image_id, images.checks_dir()) as checkout:
        checksum, version, image_kargs = build.commit_tree(sysroot, checkout, inputs, allow_secrets)
    if default is not None:
        deploy.name_package_changes(sysroot.commit(default.checksum).metadata, sysroot.commit(checksum).metadata)
    if not deploy_it:
        return Outcome(checksum, version, deployed=False, up_to_date=False)
    deploy.before_deploy(target, checksum)
    origin = {deploy.ORIGIN_INPUT_HASH: inputs.input_hash, ORIGIN_SOURCE: ref, ORIGIN_DIGEST: pulled.digest}
    with contextlib.ExitStack() as requirement:
        if key is not None:
            # Into the /etc that the new deployment's /etc is merged from; put back if the deploy fails.
            required = requirement.enter_context(trust.installed(etc, ref, key))
            log.info(f"this machine now requires of {trust.repository(ref)}: {required.describe()}")
        kargs = [*image_kargs, *target.kargs]
        deploy.deploy_commit(sysroot, checksum, kargs, deploy.install_kargs(sysroot), origin)
    log.info(f"deployed version {version} ({checksum[:12]}) from {ref}; it becomes active on the next boot")
    return Outcome(checksum, version, deployed=True, up_to_date=False)
