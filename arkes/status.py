"""The status model of a system. Its deployments are listed by libostree (or kept from an earlier listing, see
arkes.statuscache); JSON and the human table are pure functions of it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from arkes import boots, model, trust
from arkes.errors import UsageError
from arkes.names import ORIGIN_DIGEST, ORIGIN_SOURCE
from arkes.target import UPDATE_CHECK, machine_etc
from arkes.trust import Verification

if TYPE_CHECKING:
    from arkes.ostree import Sysroot
    from arkes.records import Deployment as OSTreeDeployment

API_VERSION = model.API_VERSION


@dataclass(frozen=True)
class Deployment:
    index: int
    checksum: str
    stateroot: str
    serial: int
    version: str
    timestamp: str
    input_hash: str
    base_image: str
    base_digest: str
    systemfile_sha256: str
    packages: int
    kernel: str  # the version of the kernel the deployment boots
    kargs: tuple[str, ...]
    booted: bool
    default: bool
    rollback: bool
    staged: bool
    pinned: bool
    unlocked: str
    source: str = ""  # REFERENCE@DIGEST of the published system it came from; "" for the machine's Systemfile
    # What its /etc/containers/policy.json requires of the images of its source (see arkes.trust); None without one.
    verification: Verification | None = None
    # What its boots showed (see arkes.health): good, failed and why, or on trial; None before its first check.
    boot: Boot | None = None


@dataclass(frozen=True)
class Boot:
    state: str  # good, failed, or trial (its tries are counted by the boot loader)
    at: str = ""
    reason: str = ""
    output: tuple[str, ...] = ()
    tries_left: int | None = None  # of a deployment on trial

    def describe(self) -> str:
        if self.state == "trial":
            return f"on trial: {self.tries_left} boot tries left until one is proven good"
        if self.state == "good":
            return f"good (proven {self.at})"
        return f"FAILED {self.at}: {self.reason}"


# The fields of a deployment that `finish` reads each time, not kept with the listing.
FINISHED = frozenset({"verification", "boot"})


@dataclass(frozen=True)
class InProgress:
    """An upgrade running on this machine now, which holds off shutdown (see arkes.inhibit)."""

    pid: int
    since: str
    what: str


@dataclass(frozen=True)
class LastHealth:
    checked_at: str
    good: bool
    checksum: str


@dataclass(frozen=True)
class LastCheck:
    checked_at: str
    updates: int
    errors: int


@dataclass(frozen=True)
class Status(model.Result):
    KIND: ClassVar[str] = "Status"
    sysroot: str
    deployments: tuple[Deployment, ...]
    last_update_check: LastCheck | None = None
    # The machine's identity files that came from an image, so other machines share them (see arkes.identity).
    identity_from_image: tuple[str, ...] = ()
    last_health_check: LastHealth | None = None
    upgrade_in_progress: InProgress | None = None

    def to_json(self) -> model.JSON:
        return to_json(self)

    def render(self) -> str:
        return render(self)

    def said(self) -> list[str]:
        if not self.identity_from_image:
            return []
        return [
            f"warning: this machine's {', '.join(self.identity_from_image)} came with the image it was installed "
            "from, so every machine installed from that image has the same; make new ones with "
            "`os rotate-host-keys`"
        ]


@dataclass(frozen=True)
class Listing:
    """The deployments part of a status, as libostree lists them, with where their files are: each deployment's
    directory (`roots`, in the same order) and the machine's /etc. What arkes.statuscache keeps between runs."""

    sysroot: str
    deployments: tuple[Deployment, ...]
    roots: tuple[Path, ...]
    etc: Path | None


def listing(sysroot: Sysroot) -> Listing:
    """The deployments of a loaded sysroot, each with what its commit records. Cached listings are this function's
    results: a change in what it reads, or how, needs statuscache.FORMAT raised."""
    import datetime  # not for a status built from the cache

    booted = sysroot.booted
    found = sysroot.deployments()
    result = []
    for index, d in enumerate(found):
        commit = sysroot.commit(d.checksum)
        meta = commit.metadata
        result.append(
            Deployment(
                index=index,
                checksum=d.checksum,
                stateroot=d.stateroot,
                serial=d.serial,
                version=commit.version,
                timestamp=datetime.datetime.fromtimestamp(commit.timestamp, datetime.UTC).isoformat(),
                input_hash=meta.input_hash,
                base_image=meta.base_image,
                base_digest=meta.base_digest,
                systemfile_sha256=meta.systemfile_sha256,
                packages=len(meta.packages),
                kernel=d.boot.kernel if d.boot else meta.kernel,
                kargs=d.kargs,
                booted=d.same(booted),
                default=index == 0,
                rollback=index == 1,
                staged=d.staged,
                pinned=d.pinned,
                unlocked=d.unlocked,
                source=_source(d),
            )
        )
    roots = tuple(sysroot.deployment_dir(d) for d in found)
    etc = machine_etc(sysroot.path, roots[0] if roots else None)
    return Listing(str(sysroot.path), tuple(result), roots, etc)


def _source(d: OSTreeDeployment) -> str:
    """Where a deployment came from (the origin `os switch` and `os upgrade` write: see arkes.follow)."""
    ref, digest = d.origin_value(ORIGIN_SOURCE), d.origin_value(ORIGIN_DIGEST)
    if ref.startswith("ostree+"):
        return f"{ref}@{digest}" if digest else ref  # an archive repository's branch, and its commit
    return f"{ref.rpartition(':')[0]}@{digest}" if ref and digest else ref


def finish(found: Listing, state_dir: Path) -> Status:
    """The status of the system whose deployments are `found`: with what its state directory says now (the last
    update check) and whether its identity files came from an image. Plain file reads, no libostree."""
    last = None
    try:
        report = json.loads((state_dir / UPDATE_CHECK).read_text())
    except (OSError, ValueError):
        report = None
    if isinstance(report, dict):
        last = LastCheck(
            str(report.get("checkedAt", "")), len(report.get("updates", [])), len(report.get("errors", []))
        )
    from arkes import identity

    shared: list[str] = []
    if found.etc is not None:
        shared = identity.from_image(found.etc, state_dir, [root / "usr/etc" for root in found.roots])
    repo = Path(found.sysroot) / "ostree/repo"
    deployments = tuple(
        _verified(d, root, found.etc, repo) for d, root in zip(found.deployments, found.roots, strict=True)
    )
    deployments = _boots(deployments, Path(found.sysroot), state_dir)
    health_check = None
    if isinstance(checked := boots.last(state_dir), dict):
        health_check = LastHealth(str(checked.get("at", "")), bool(checked.get("good")), str(checked.get("checksum")))
    running = None
    if found.sysroot == "/":
        from arkes import inhibit

        if (note := inhibit.in_progress()) is not None:
            running = InProgress(int(str(note.get("pid"))), str(note.get("since", "")), str(note.get("what", "")))
    return Status(found.sysroot, deployments, last, tuple(shared), health_check, running)


def _boots(deployments: tuple[Deployment, ...], sysroot: Path, state_dir: Path) -> tuple[Deployment, ...]:
    """Each deployment with what its boots showed, and the one on trial with the tries the boot loader left it."""
    kept = boots.records(state_dir)
    env = boots.read_env(sysroot / "boot" / boots.ENV)
    result = []
    for d in deployments:
        boot = None
        if (found := kept.get(d.checksum)) is not None:
            boot = Boot(found.state, found.at, found.reason, found.output)
        if env.get(boots.TRIAL) == f"{d.checksum}.{d.serial}" and d.default and not d.staged:
            left = env.get(boots.TRIES, "0")
            boot = Boot("trial", tries_left=int(left) if left.isdigit() else 0)
        result.append(dataclasses.replace(d, boot=boot) if boot is not None else d)
    return tuple(result)


def _verified(d: Deployment, root: Path, machine: Path | None, repo: Path) -> Deployment:
    """A deployment that follows a published system, with what its /etc's policy requires of it (a deployment
    staged on a running system has only the image's defaults in its /etc until it is finalized at shutdown: the
    running one's /etc is what it will merge); one that follows an archive repository, with what the machine's
    remote for it requires."""
    if not d.source:
        return d
    if d.source.startswith("ostree+"):
        from arkes import archive

        name, verify, keyring = archive.verification(repo, d.source.rpartition("@")[0])
        required = trust.Requirement("gpgSigned", (keyring,)) if verify else trust.Requirement("insecureAcceptAnything")
        return dataclasses.replace(d, verification=Verification(f"ostree remote {name}", (required,)))
    etc = root / "etc" if (root / "etc").is_dir() and not d.staged else machine
    if etc is None:
        return d
    try:
        found = trust.of_machine(etc, d.source)
    except UsageError as e:
        found = Verification(f"unreadable: {e.message}", ())
    return dataclasses.replace(d, verification=found)


def to_json(status: Status) -> model.JSON:
    data = model.document("Status", status)
    if status.last_update_check is None:
        del data["lastUpdateCheck"]
    if status.last_health_check is None:
        del data["lastHealthCheck"]
    if status.upgrade_in_progress is None:
        del data["upgradeInProgress"]
    return data


def _flags(d: Deployment) -> str:
    names = [
        name
        for name, on in (
            ("booted", d.booted),
            ("default", d.default),
            ("rollback", d.rollback),
            ("staged", d.staged),
            ("pinned", d.pinned),
            (f"unlocked={d.unlocked}", d.unlocked != "none"),
        )
        if on
    ]
    return ", ".join(names)


def render(status: Status) -> str:
    """The human view: one block per deployment, in boot order, the booted one marked with ●."""
    if not status.deployments:
        return f"No deployments in {status.sysroot}.\n"
    lines = []
    for d in status.deployments:
        mark = "●" if d.booted else " "
        lines.append(f"{mark} {d.index}  {d.version or '(no version)'}  [{_flags(d)}]")
        lines.append(f"     commit      {d.checksum}.{d.serial}")
        lines.append(f"     built       {d.timestamp}")
        lines.append(f"     base        {d.base_image or '-'} {d.base_digest or ''}".rstrip())
        lines.append(f"     input hash  {d.input_hash or '-'}")
        lines.append(f"     source      {d.source or 'the Systemfile in /etc/system'}")
        if d.verification is not None:
            lines.append(f"     requires    {d.verification.describe()}")
        if d.boot is not None:
            lines.append(f"     boot        {d.boot.describe()}")
            lines += [f"                 | {line}" for line in d.boot.output]
        lines.append(f"     packages    {d.packages}")
        lines.append(f"     kernel      {d.kernel or '-'}")
        lines.append(f"     kargs       {' '.join(d.kargs) or '-'}")
        lines.append("")
    if status.last_update_check is not None:
        c = status.last_update_check
        found = f"{c.updates} update(s) available" if c.updates else "no updates"
        errors = f", {c.errors} error(s)" if c.errors else ""
        lines.append(f"Last update check: {c.checked_at}: {found}{errors} (`os checkupdates` for details)")
        lines.append("")
    if status.upgrade_in_progress is not None:
        u = status.upgrade_in_progress
        lines.append(f"In progress: {u.what}, process {u.pid} since {u.since}; shutdown and reboot wait for it")
        lines.append("")
    if status.last_health_check is not None:
        h = status.last_health_check
        verdict = "healthy" if h.good else "UNHEALTHY"
        lines.append(f"Last health check: {h.checked_at}: {h.checksum[:12]} {verdict} (`os health` for details)")
        lines.append("")
    return "\n".join(lines)
