"""What each command found or did, as data: one frozen model per result, with its JSON document (`to_json`) and what
people are shown (`render` for stdout, `said` for the lines on stderr), all pure functions of the model.

Every document carries `apiVersion` and `kind`; every key is camelCase (`inputHash`, `upToDate`), the fields'
names turned by `camel`. docs/json.md describes each kind. The status model, with its own renderer, is in
arkes.status and follows the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from arkes.model import API_VERSION as API_VERSION
from arkes.model import JSON as JSON
from arkes.model import Result as Result
from arkes.model import camel as camel
from arkes.model import document as document
from arkes.model import fields as fields
from arkes.model import plain as plain
from arkes.model import size as size

# --- os rotate-host-keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostKey:
    path: str  # the public key, /etc/ssh/ssh_host_TYPE_key.pub
    type: str  # ED25519, ECDSA, RSA
    fingerprint: str  # SHA256:...


@dataclass(frozen=True)
class HostKeys(Result):
    KIND: ClassVar[str] = "HostKeys"
    keys: tuple[HostKey, ...]

    def render(self) -> str:
        return "".join(f"{k.type:<8} {k.fingerprint}  {k.path}\n" for k in self.keys)

    def said(self) -> list[str]:
        return [
            "made new SSH host keys; clients that knew the old ones will warn once and must forget them "
            "(ssh-keygen -R HOST)"
        ]


# --- os check ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check(Result):
    KIND: ClassVar[str] = "Check"
    path: str
    valid: bool
    problems: tuple[str, ...]
    warnings: tuple[str, ...]

    def render(self) -> str:
        return "".join(f"{problem}\n" for problem in self.problems)

    def said(self) -> list[str]:
        return [f"warning: {w}" for w in self.warnings] + ([f"{self.path}: valid"] if self.valid else [])


# --- install, build, upgrade ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome(Result):
    """A system built (and deployed, or found up to date): what `os install`, `os build` and `os upgrade` did."""

    KIND: ClassVar[str] = "Outcome"
    checksum: str
    version: str
    deployed: bool
    up_to_date: bool
    # A published update this machine waits for: its wave is not in the rollout yet (see arkes.rollout).
    held: bool = False


@dataclass(frozen=True)
class Installed(Outcome):
    KIND: ClassVar[str] = "Install"
    path: str = ""  # the sysroot directory, or the disk
    disk: bool = False

    def said(self) -> list[str]:
        return [f"installed version {self.version} ({self.checksum[:12]}) {'to' if self.disk else 'into'} {self.path}"]


# --- os iso -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Iso(Result):
    KIND: ClassVar[str] = "Iso"
    path: str
    bytes: int
    checksum: str  # the commit it installs
    version: str
    label: str  # the ISO 9660 volume label the live system finds its medium by
    unattended: bool  # an answer file is on it

    def said(self) -> list[str]:
        how = "installs unattended from its answer file" if self.unattended else "installs when asked"
        return [
            f"wrote {self.path} ({self.bytes / 2**20:.0f} MiB): the installer of version {self.version} "
            f"({self.checksum[:12]}); it {how}. Write it to a USB stick byte for byte (dd) or boot it as a CD."
        ]


@dataclass(frozen=True)
class Built(Outcome):
    KIND: ClassVar[str] = "Build"

    def render(self) -> str:
        return f"{self.checksum}\n"


@dataclass(frozen=True)
class Upgraded(Outcome):
    KIND: ClassVar[str] = "Upgrade"
    download_only: bool = False

    def said(self) -> list[str]:
        if self.download_only and not self.up_to_date:
            return [f"built version {self.version}; `os upgrade` deploys it without building again"]
        return []


# --- revert, rollback, pin, prune ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reverted(Result):
    KIND: ClassVar[str] = "Revert"
    removed: str  # the commit of the deployment removed
    version: str

    def said(self) -> list[str]:
        return [f"removed deployment 0 (version {self.version}); the previous deployment is the default again"]


@dataclass(frozen=True)
class RolledBack(Result):
    KIND: ClassVar[str] = "Rollback"
    default: str  # the commit that is the default now
    version: str
    accounts: tuple[str, ...] = ()  # what the users-and-groups merge carried back

    def said(self) -> list[str]:
        return [*self.accounts, f"version {self.version} is now the default for the next boot"]


@dataclass(frozen=True)
class Pinned(Result):
    KIND: ClassVar[str] = "Pin"
    index: int
    checksum: str
    pinned: bool

    def said(self) -> list[str]:
        return [f"deployment {self.index} {'pinned' if self.pinned else 'unpinned'}"]


@dataclass(frozen=True)
class Pruned(Result):
    KIND: ClassVar[str] = "Prune"
    removed_deployments: tuple[str, ...]
    pruned_objects: int
    freed_repo_bytes: int
    removed_images: tuple[str, ...]
    freed_image_bytes: int
    removed_layers: int = 0  # image layer commits no kept deployment was made of

    def said(self) -> list[str]:
        return [
            f"removed {len(self.removed_deployments)} deployment(s), {self.removed_layers} image layer(s) and "
            f"{self.pruned_objects} repository object(s), freeing {size(self.freed_repo_bytes)}; removed "
            f"{len(self.removed_images)} stale build image(s) ({size(self.freed_image_bytes)})"
        ]


# --- publish -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published(Result):
    KIND: ClassVar[str] = "Publish"
    reference: str  # REGISTRY/NAME:TAG
    digest: str  # of the manifest pushed: REFERENCE@DIGEST names exactly this system
    version: str
    checksum: str
    input_hash: str
    signed_by: str = ""  # the private key file that signed it; "" when unsigned
    rollout: int | None = None  # the percentage of the fleet it rolls out to; None: every machine

    def render(self) -> str:
        repository = self.reference.rpartition(":")[0]  # the reference always has its tag (publish.reference)
        return f"{repository}@{self.digest}\n"

    def said(self) -> list[str]:
        signed = f", signed by {self.signed_by}" if self.signed_by else ""
        said = [f"published version {self.version} ({self.checksum[:12]}) as {self.reference} ({self.digest}){signed}"]
        if self.rollout is not None:
            said.append(f"rolling out to {self.rollout} % of the fleet; `os rollout {self.reference} N` changes that")
        return said


@dataclass(frozen=True)
class PublishedTree(Result):
    KIND: ClassVar[str] = "PublishTree"
    directory: str  # the archive repository
    branch: str
    checksum: str  # the commit the branch names now
    version: str
    previous: str  # the commit it named before; "" for a new branch
    delta_bytes: int  # the static delta from `previous`: what a machine that has it downloads
    signed_by: str  # the GPG key; "" when unsigned

    def render(self) -> str:
        return f"{self.checksum}\n"

    def said(self) -> list[str]:
        signed = f", signed by {self.signed_by}" if self.signed_by else ""
        said = [f"published version {self.version} ({self.checksum[:12]}) as {self.branch} in {self.directory}{signed}"]
        if self.previous and self.previous != self.checksum:
            said.append(f"static delta from {self.previous[:12]}: {size(self.delta_bytes)}")
        return said


@dataclass(frozen=True)
class RolloutSet(Result):
    KIND: ClassVar[str] = "Rollout"
    reference: str
    digest: str  # the image `reference` names now
    checksum: str  # the commit of the system it holds, which the rollout governs
    percent: int  # of the fleet that may take it
    set_at: str  # when the publisher set it; "" when no rollout was set (every machine takes it)

    def render(self) -> str:
        named = f"{self.checksum[:12]} ({self.digest})"
        if not self.set_at:
            return f"{self.reference}: no rollout, every machine takes {named}\n"
        return f"{self.reference}: {self.percent} % of the fleet may take {named}, since {self.set_at}\n"


@dataclass(frozen=True)
class KeyPair(Result):
    KIND: ClassVar[str] = "KeyPair"
    private_key: str  # for `os publish --sign-by`: keep it on the machine that publishes
    public_key: str  # for the machines that follow: `os switch REF --require-signed`

    def render(self) -> str:
        return f"{self.private_key}\n{self.public_key}\n"

    def said(self) -> list[str]:
        return [
            f"wrote {self.private_key} (sign with it: `os publish --sign-by {self.private_key} REF`)",
            f"wrote {self.public_key} (give it to the machines: `os switch REF --require-signed {self.public_key}`)",
        ]


# --- du ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentUsage:
    index: int
    checksum: str
    own: int  # objects only this deployment's commit reaches, plus its /etc
    shared: int  # objects it shares with other deployments (counted once in `shared_bytes`)


@dataclass(frozen=True)
class Usage(Result):
    KIND: ClassVar[str] = "DiskUsage"
    repo_bytes: int  # the whole repository directory
    objects_bytes: int  # repository objects
    shared_bytes: int  # objects reached by more than one deployment
    other_bytes: int  # objects no deployment reaches (later builds, unreferenced leftovers)
    deployments: tuple[DeploymentUsage, ...]
    etc_bytes: int  # every deployment's own /etc, included in their `own`
    podman_bytes: int  # container storage used by images
    prune_bytes: int  # what `os prune` (keeping 2) would free from the repository and deployments
    prune_image_bytes: int
    layers: int = 0  # image layers committed (each once, shared by every deployment made of it)
    layer_bytes: int = 0  # objects only layer commits reach (counted in `other_bytes`)

    def render(self) -> str:
        lines = [f"repository            {size(self.repo_bytes):>10}  (objects {size(self.objects_bytes)})"]
        for d in self.deployments:
            lines.append(f"  deployment {d.index:<2}       {size(d.own):>10} only its own, {size(d.shared)} shared")
        lines.append(f"  shared (counted once) {size(self.shared_bytes):>8}")
        lines.append(f"  no deployment's      {size(self.other_bytes):>9}  (builds not deployed, leftovers)")
        lines.append(f"  {self.layers} image layer(s)   {size(self.layer_bytes):>9}  of it, only theirs")
        lines.append(f"container storage     {size(self.podman_bytes):>10}")
        prune = f"{size(self.prune_bytes):>10}  + {size(self.prune_image_bytes)} of build images"
        lines.append(f"os prune would free   {prune}")
        return "".join(f"{line}\n" for line in lines)


# --- diff ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A path (or package) that differs: added, removed, modified (files) or changed (packages)."""

    kind: str
    name: str
    old: str = ""
    new: str = ""


_MARKS = {"added": "+", "removed": "-", "modified": "M", "changed": "~", "kernel": "~"}


@dataclass(frozen=True)
class Diff(Result):
    KIND: ClassVar[str] = "Diff"
    of: str  # packages, files, etc or var
    changes: tuple[Change, ...]

    def render(self) -> str:
        lines = []
        for c in self.changes:
            detail = ""
            if self.of == "packages":
                both = c.kind in ("changed", "kernel")
                detail = f"  {c.old or '-'} -> {c.new or '-'}" if both else f"  {c.new or c.old}"
            elif self.of == "var":
                detail = f"  ({c.old})"
            elif self.of == "etc" and c.old:
                detail = f"  ({c.old} -> {c.new})"
            lines.append(f"{_MARKS.get(c.kind, '?')} {c.name}{detail}\n")
        return "".join(lines)

    def said(self) -> list[str]:
        return [] if self.changes else ["no differences"]


# --- checkupdates --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wave:
    """Where this machine stands in the rollout of a published update."""

    percent: int  # of the fleet that may take it now
    wave: int  # this machine's, 0 to 99
    admitted: bool  # wave < percent: this machine takes it

    def describe(self) -> str:
        verdict = "this machine takes it" if self.admitted else "this machine waits"
        return f"rolling out to {self.percent} % of the fleet; this machine's wave is {self.wave}: {verdict}"


@dataclass(frozen=True)
class Finding:
    kind: str  # systemfile, context, kargs, tool, base-image, registry, repository, package, kernel, published
    subject: str
    old: str
    new: str
    rollout: Wave | None = None  # for a published update that rolls out in waves

    @property
    def takeable(self) -> bool:
        """Whether `os upgrade` takes it now (an update held back by its rollout is not)."""
        return self.rollout is None or self.rollout.admitted

    def line(self) -> str:
        if self.rollout is not None:
            return f"{self.kind} {self.subject}: {self.old or '-'} -> {self.new or '-'} ({self.rollout.describe()})"
        if self.kind == "package":
            return f"package {self.subject} {self.old} -> {self.new}"
        if self.kind == "kernel":
            return f"kernel {_upstream(self.old)} -> {_upstream(self.new)} ({self.subject})"
        if self.kind == "repository":
            return f"repository {self.subject}: new release ({self.old} -> {self.new})"
        if self.kind == "context":
            return f"context {self.subject}: {self.new}"
        return f"{self.kind} {self.subject}: {self.old or '-'} -> {self.new or '-'}"


def _upstream(version: str) -> str:
    """A Debian kernel package's version without its Debian revision: 6.12.118-1 → 6.12.118."""
    return version.rsplit("-", 1)[0] if "-" in version else version


@dataclass(frozen=True)
class UpdateCheck(Result):
    KIND: ClassVar[str] = "UpdateCheck"
    checked_at: str
    deployment: str
    findings: tuple[Finding, ...]
    errors: tuple[str, ...]

    def to_json(self) -> JSON:
        updates = [fields(f) | {"line": f.line()} for f in self.findings]
        body = {"checked_at": self.checked_at, "deployment": self.deployment, "updates": updates}
        return document(self.KIND, body | {"errors": list(self.errors)})

    def render(self) -> str:
        return "".join(f"{f.line()}\n" for f in self.findings)

    def said(self) -> list[str]:
        return [] if self.findings or self.errors else ["no updates"]


# --- images --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    ref: str
    digest: str
    rebuilt: bool


@dataclass(frozen=True)
class Images(Result):
    KIND: ClassVar[str] = "Images"
    images: tuple[Image, ...]

    def said(self) -> list[str]:
        return [f"{i.ref}: {'built' if i.rebuilt else 'up to date'} ({i.digest[:19]})" for i in self.images]
