"""Publish and follow a system as an OSTree archive repository: plain files any static HTTP server serves, for
thin links.

`os publish --ostree DIR` copies the commit of the default deployment into DIR (an archive-mode repository,
made on first use) under a branch (`arkes/stable` unless `--branch` says otherwise), signs it with a GPG key of
the publisher's keyring (`--sign-by KEYID`; Debian's OSTree has no ed25519 signing), writes a static delta from
the commit the branch named before, and updates the summary. The commit is the publisher's own, checksum for
checksum: its metadata (version, inputs, packages) travels with it.

`os switch ostree+http://HOST[:PORT]/PATH[#BRANCH]` adds the repository as a remote of the machine's repository
(with `--require-signed KEY`, a GPG public key, it verifies every commit's signature against that key alone),
pulls the branch (through the static delta where one leads from what the machine has) and deploys it. From then
on `os upgrade` pulls the branch again, `os checkupdates` reads only its newest commit.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import log, run
from arkes.errors import ArkesError, CommandError, UsageError
from arkes.names import ORIGIN_DIGEST, ORIGIN_SOURCE
from arkes.results import Outcome, PublishedTree

if TYPE_CHECKING:
    from arkes.ostree import Sysroot
    from arkes.target import Target

SCHEME = "ostree+"
DEFAULT_BRANCH = "arkes/stable"
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
# What `ostree pull` says when a commit fails its signature check, and what that means for a person.
_REFUSALS = (
    ("no signatures found", "it is not signed, and this machine requires a signature"),
    ("none are in trusted keyring", "it is not signed by the key this machine was given"),
    ("signature", "its signature does not verify against the key this machine was given"),
)


@dataclass(frozen=True)
class Source:
    """An archive repository a machine follows: its URL, the branch, and the remote's name in the machine's
    repository."""

    url: str
    branch: str

    @property
    def reference(self) -> str:
        return f"{SCHEME}{self.url}#{self.branch}"

    @property
    def remote(self) -> str:
        return "arkes-" + hashlib.sha256(self.url.encode()).hexdigest()[:12]


def is_archive(ref: str) -> bool:
    return ref.startswith(SCHEME)


def source(ref: str) -> Source:
    """`ostree+http://HOST[:PORT]/PATH[#BRANCH]` as a Source."""
    url, _, branch = ref.removeprefix(SCHEME).partition("#")
    branch = branch or DEFAULT_BRANCH
    if not re.fullmatch(r"https?://[^/\s#]+(/[^\s#]*)?", url):
        raise UsageError(
            f"{ref} is not an OSTree repository to follow",
            hint="give ostree+http://HOST[:PORT]/PATH[#BRANCH], e.g. ostree+http://updates.example.com/repo",
        )
    if not _BRANCH.fullmatch(branch):
        raise UsageError(f"{branch} is not a branch name")
    return Source(url.rstrip("/"), branch)


def _ostree(repo: Path, *args: str, what: str) -> str:
    return run.run(["ostree", f"--repo={repo}", *args], what=what).stdout


def _gpg(key: str, homedir: str | None) -> list[str]:
    return [f"--gpg-sign={key}", *([f"--gpg-homedir={homedir}"] if homedir else [])]


def publish(
    sysroot: Sysroot, directory: Path, *, branch: str, index: int, key: str | None, homedir: str | None
) -> PublishedTree:
    """Put the system of deployment `index` into the archive repository `directory` under `branch`, signed by the
    GPG key `key` where given, with a static delta from the branch's previous commit and a new summary."""
    if not _BRANCH.fullmatch(branch):
        raise UsageError(f"{branch} is not a branch name")
    deployments = sysroot.deployments()
    if not 0 <= index < len(deployments):
        raise UsageError(f"there is no deployment {index}: `os status` lists {len(deployments)}")
    commit = sysroot.commit(deployments[index].checksum)
    if not (directory / "config").is_file():
        if directory.exists() and any(directory.iterdir()):
            raise UsageError(f"{directory} is neither empty nor an OSTree repository")
        directory.mkdir(parents=True, exist_ok=True)
        _ostree(directory, "init", "--mode=archive", what=f"making the repository {directory}")
    mode = configparser.ConfigParser()
    mode.read(directory / "config")
    if mode.get("core", "mode", fallback="") not in ("archive", "archive-z2"):
        raise UsageError(f"{directory} is an OSTree repository, but not an archive one that HTTP can serve")
    previous = run.run(["ostree", f"--repo={directory}", "rev-parse", branch], check=False).stdout.strip()
    with log.step("copy"):
        _ostree(directory, "pull-local", str(sysroot.repo_path), commit.checksum, what=f"copying into {directory}")
    if key is not None:
        with log.step("sign"):
            args = ["gpg-sign", commit.checksum, key, *([f"--gpg-homedir={homedir}"] if homedir else [])]
            try:
                _ostree(directory, *args, what=f"signing with the key {key}")
            except CommandError as e:
                raise ArkesError(f"signing with the GPG key {key} failed: {e.message}") from None
    delta_bytes = 0
    if previous and previous != commit.checksum:
        with log.step("delta"):
            before = _bytes(directory / "deltas")
            generate = ["static-delta", "generate", f"--from={previous}", f"--to={commit.checksum}"]
            _ostree(directory, *generate, what="writing the static delta")
            delta_bytes = _bytes(directory / "deltas") - before
    _ostree(directory, "refs", "--force", f"--create={branch}", commit.checksum, what=f"moving {branch}")
    summary = ["summary", "--update", *(_gpg(key, homedir) if key is not None else [])]
    _ostree(directory, *summary, what="updating the summary")
    return PublishedTree(str(directory), branch, commit.checksum, commit.version, previous, delta_bytes, key or "")


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else 0


def add_remote(sysroot: Sysroot, followed: Source, key: Path | None) -> None:
    """The archive repository as a remote of the machine's repository: GPG verification on, with `key` as its
    only trusted key, when a key is given; replaced when the remote is there already."""
    repo = sysroot.repo_path
    name = followed.remote
    run.run(["ostree", f"--repo={repo}", "remote", "delete", "--if-exists", name], what="replacing the remote")
    verify = "true" if key is not None else "false"
    args = ["remote", "add", f"--set=gpg-verify={verify}", "--set=gpg-verify-summary=false", name, followed.url]
    _ostree(repo, *args, followed.branch, what=f"adding the remote {followed.url}")
    if key is not None:
        _ostree(repo, "remote", "gpg-import", name, "-k", str(key), what=f"importing the key {key}")


def verification(repo: Path, ref: str) -> tuple[str, bool, str]:
    """What the repository `repo` requires of the commits of the archive repository `ref` (for `os status`): the
    remote's name, whether it verifies GPG signatures, and the keyring it trusts."""
    followed = source(ref)
    config = configparser.ConfigParser()
    config.read(repo / "config")
    verify = config.getboolean(f'remote "{followed.remote}"', "gpg-verify", fallback=False)
    return followed.remote, verify, str(repo / f"{followed.remote}.trustedkeys.gpg")


def newest(sysroot: Sysroot, followed: Source) -> str:
    """The commit the branch names now: its commit object alone is pulled (and its signature verified)."""
    _pull(sysroot, followed, "--commit-metadata-only")
    return run.run(
        ["ostree", f"--repo={sysroot.repo_path}", "rev-parse", f"{followed.remote}:{followed.branch}"],
        what="reading the branch",
    ).stdout.strip()


def _pull(sysroot: Sysroot, followed: Source, *options: str) -> None:
    argv = ["ostree", f"--repo={sysroot.repo_path}", "pull", *options, followed.remote, followed.branch]
    try:
        with log.step("pull") as progress:
            show = lambda line: progress.update(0.0, line.strip()[:70])  # noqa: E731
            run.stream(argv, show, what=f"pulling {followed.reference}")
    except CommandError as e:
        detail = e.message.lower()
        for needle, meaning in _REFUSALS:
            if needle in detail and ("gpg" in detail or "signature" in detail):
                from arkes.skopeo import Refused

                raise Refused(
                    f"pulling {followed.reference} refused: {meaning}",
                    hint="nothing was deployed; `os status` shows what this machine requires",
                ) from None
        raise


def upgrade(target: Target, ref: str, *, deploy_it: bool = True, require_key: Path | None = None) -> Outcome:
    """Deploy what the archive repository's branch names now, unless the default deployment is that already.
    With `require_key` (a GPG public key), the remote is set to verify every commit against it. The caller holds
    the lock."""
    from arkes import deploy

    sysroot = target.sysroot
    followed = source(ref)
    default = sysroot.default()
    if require_key is not None or not _has_remote(sysroot, followed):
        add_remote(sysroot, followed, require_key)
    checksum = newest(sysroot, followed)
    if default is not None and default.checksum == checksum:
        current = sysroot.commit(checksum)
        log.info(f"the system is up to date: version {current.version} is {followed.reference} ({checksum[:12]})")
        return Outcome(current.checksum, current.version, deployed=False, up_to_date=True)
    _pull(sysroot, followed)
    sysroot.reload()
    commit = sysroot.commit(checksum)
    if not commit.metadata.input_hash:
        raise ArkesError(f"{followed.reference} holds no Arkēs system (its commit records no inputs)")
    if default is not None:
        deploy.name_package_changes(sysroot.commit(default.checksum).metadata, commit.metadata)
    if not deploy_it:
        return Outcome(checksum, commit.version, deployed=False, up_to_date=False)
    deploy.before_deploy(target, checksum)
    origin = {
        deploy.ORIGIN_INPUT_HASH: commit.metadata.input_hash,
        ORIGIN_SOURCE: followed.reference,
        ORIGIN_DIGEST: checksum,
    }
    kargs = [*commit.metadata.kargs, *target.kargs]
    deploy.deploy_commit(sysroot, checksum, kargs, deploy.install_kargs(sysroot), origin)
    log.info(
        f"deployed version {commit.version} ({checksum[:12]}) from {followed.reference}; "
        "it becomes active on the next boot"
    )
    return Outcome(checksum, commit.version, deployed=True, up_to_date=False)


def _has_remote(sysroot: Sysroot, followed: Source) -> bool:
    config = configparser.ConfigParser()
    config.read(sysroot.repo_path / "config")
    return config.has_section(f'remote "{followed.remote}"')


def gpg_public_key(path: Path) -> Path:
    """A GPG public key file (armored or binary) for `--require-signed` of an archive repository."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the public key: {e.strerror}") from None
    if b"BEGIN PUBLIC KEY" in data:
        raise UsageError(
            f"{path} is a sigstore key; an OSTree repository's commits are signed with GPG",
            hint="export the publisher's key with `gpg --export --armor KEYID`",
        )
    if b"BEGIN PGP PUBLIC KEY BLOCK" not in data and not (data[:1] and data[0] & 0x80):
        raise UsageError(f"{path} is not a GPG public key (`gpg --export --armor KEYID` writes one)")
    return path.resolve()


def homedir() -> str | None:
    return os.environ.get("GNUPGHOME")
