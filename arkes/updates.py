"""`os checkupdates`: what an upgrade would change, found without changing anything.

Findings, one line each: the declared inputs (Systemfile, context files, kernel arguments, the tool)
differ from those the default deployment was built from; the base image changed (its local digest, and for images
from a registry the registry's digest, read without pulling); a package repository published a new release (see
arkes.packages); package updates for the deployed image, asked of the image's own package manager in a container
made from it. The last report is kept for `os status`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import __version__, build, log, packages, podman
from arkes.errors import ArkesError, UsageError
from arkes.names import ORIGIN_DIGEST, ORIGIN_SOURCE
from arkes.records import Metadata
from arkes.results import Finding, UpdateCheck, Wave
from arkes.target import Target

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

POLICY_FILE = "updates.conf"
POLICIES = {
    "check": "the daily timer only reports updates",
    "stage": "the daily timer builds an update and stages it for the next boot",
}


def automatic_policy(system_dir: Path) -> str:
    """What the daily timer does, from `/etc/system/updates.conf` (`policy = check|stage`; check without it)."""
    path = system_dir / POLICY_FILE
    if not path.is_file():
        return "check"
    policy = "check"
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, equals, value = (part.strip() for part in line.partition("="))
        if not equals or key != "policy":
            raise UsageError(f"{path}:{number}: expected `policy = check` or `policy = stage`, not {raw.strip()!r}")
        if value not in POLICIES:
            raise UsageError(f"{path}:{number}: unknown policy {value!r}", hint=f"choose one of: {', '.join(POLICIES)}")
        policy = value
    return policy


def state_path(target: Target) -> Path:
    return target.update_check


def _input_findings(target: Target, metadata: Metadata) -> list[Finding]:
    path = target.system_dir / "Systemfile"
    findings = []
    recorded_sf = metadata.systemfile_sha256
    current_sf = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    if recorded_sf != current_sf:
        findings.append(Finding("systemfile", str(path), recorded_sf[:12], current_sf[:12] or "missing"))
    recorded = dict(metadata.context)
    current = dict(build.context_manifest(path.parent)) if path.parent.is_dir() else {}
    for name in sorted(set(recorded) | set(current)):
        if name in ("Systemfile", "kargs"):
            continue  # reported as their own kinds
        if name not in recorded:
            findings.append(Finding("context", name, "", "added"))
        elif name not in current:
            findings.append(Finding("context", name, "", "removed"))
        elif recorded[name] != current[name]:
            findings.append(Finding("context", name, "", "modified"))
    recorded_kargs = " ".join(metadata.machine_kargs)
    current_kargs = " ".join(target.kargs)
    if recorded_kargs != current_kargs:
        findings.append(Finding("kargs", str(target.system_dir / "kargs"), recorded_kargs, current_kargs))
    tool = metadata.tool_version
    if tool != __version__:
        findings.append(Finding("tool", "os", tool, __version__))
    return findings


def _published_findings(sysroot: Sysroot, ref: str, deployed: str, etc: Path, errors: list[str]) -> list[Finding]:
    """The published system `ref` names another image than the one deployed, and where this machine stands in its
    rollout: the registry is asked, nothing is pulled (of an archive repository, the newest commit alone)."""
    from arkes import archive, follow, rollout

    if archive.is_archive(ref):
        try:
            newest = archive.newest(sysroot, archive.source(ref))
        except ArkesError as e:
            errors.append(f"cannot ask {ref}: {e.message}")
            return []
        return [Finding("published", ref, deployed, newest)] if newest != deployed else []

    try:
        named = follow.remote(ref)
        digest = named.digest
        if digest == deployed:
            return []
        governing = rollout.governing(ref, named.commit)
    except ArkesError as e:
        errors.append(f"cannot ask the registry for {ref}: {e.message}")
        return []
    if governing is None:
        return [Finding("published", ref, deployed, digest)]
    machine_wave = rollout.wave(etc)
    wave = Wave(governing.percent, machine_wave, governing.admits(machine_wave))
    return [Finding("published", ref, deployed, digest, wave)]


def _base_findings(metadata: Metadata, errors: list[str]) -> list[Finding]:
    ref = metadata.base_image
    recorded = metadata.base_digest
    if not ref:
        return []
    findings = []
    image = podman.image_info(ref)
    if image is not None:
        if recorded not in podman.known_digests(ref, image):
            findings.append(Finding("base-image", ref, recorded, podman.image_digest(ref, image)))
    else:
        errors.append(f"the base image {ref} is not in local container storage")
    if not ref.startswith("localhost/"):
        try:
            remote = podman.registry_digest(ref)
        except ArkesError as e:
            errors.append(f"cannot read the registry digest of {ref}: {e.message}")
        else:
            if remote != recorded:
                findings.append(Finding("registry", ref, recorded, remote))
    return findings


# linux-image-amd64, linux-image-rt-amd64, linux-image-cloud-amd64; not the versioned linux-image-6.12.N+deb13-amd64.
_KERNEL_METAPACKAGE = re.compile(r"linux-image-(?:[a-z]+-)?(?:amd64|arm64|i386|ppc64el|s390x|armmp|686(?:-pae)?)")


def parse_upgradable(text: str) -> list[Finding]:
    """`apt list --upgradable` lines: `name/suite new-version arch [upgradable from: old-version]`."""
    findings = []
    for line in text.splitlines():
        if "[upgradable from:" not in line:
            continue
        head, _, tail = line.partition(" [upgradable from: ")
        fields = head.split()
        if len(fields) < 2:
            continue
        name = fields[0].split("/", 1)[0]
        # The flavour's metapackage moving (linux-image-amd64) is how Debian brings a new kernel: say so.
        kind = "kernel" if _KERNEL_METAPACKAGE.fullmatch(name) else "package"
        findings.append(Finding(kind, name, tail.rstrip("]").strip(), fields[1]))
    return findings


def _package_findings(sysroot: Sysroot, metadata: Metadata, errors: list[str]) -> list[Finding]:
    image = podman.build_tag(metadata.input_hash, sysroot.system_id(create=False))
    if not podman.image_exists(image):
        errors.append(f"the image of the default deployment ({image}) is not in container storage")
        return []
    script = "apt-get update -qq >/dev/null && apt list --upgradable 2>/dev/null"
    try:
        output = podman.run_in(image, ["sh", "-c", script], what="apt in the deployed image")
    except ArkesError as e:
        errors.append(e.message)
        return []
    return parse_upgradable(output)


def _repository_findings(target: Target, metadata: Metadata, errors: list[str]) -> list[Finding]:
    """Repositories that published a new release since the default deployment was built (see arkes.packages)."""
    recorded = dict(metadata.package_indexes)
    if not recorded:
        return []
    state = packages.fetch_state(recorded, cache=target.package_cache)
    errors += [f"cannot reach a package repository: {problem}" for problem in state.unreachable]
    return [Finding("repository", url, recorded[url][:12], state.indexes[url][:12]) for url in state.changed(recorded)]


def check(target: Target, *, packages: bool = True) -> UpdateCheck:
    sysroot = target.sysroot
    default = sysroot.default()
    if default is None:
        raise ArkesError(f"{sysroot.path} has no deployment to check")
    metadata = sysroot.commit(default.checksum).metadata
    errors: list[str] = []
    followed = default.origin_value(ORIGIN_SOURCE)
    if followed:
        # A machine that follows a published system takes what its registry names, packages included.
        deployed = default.origin_value(ORIGIN_DIGEST)
        findings = _published_findings(sysroot, followed, deployed, target.system_etc, errors)
    else:
        findings = _input_findings(target, metadata)
        findings += _base_findings(metadata, errors)
        if packages:
            findings += _repository_findings(target, metadata, errors)
            findings += _package_findings(sysroot, metadata, errors)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    report = UpdateCheck(now, default.checksum, tuple(findings), tuple(errors))
    try:
        _record(target, report)
    except OSError as e:
        # A read-only sysroot can still be asked; only `os status` misses the report.
        log.warn(f"the report is not kept for `os status`: {e.strerror}: {e.filename}")
    return report


def _record(target: Target, report: UpdateCheck) -> None:
    path = state_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
