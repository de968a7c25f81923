"""Which published systems a machine trusts: containers' policy.json, the keys it names, and registries.d.

A machine verifies what it pulls the way Podman does, against /etc/containers/policy.json: the requirement of the
most specific scope that matches the image's reference applies (the reference with its tag, the repository, each
namespace above it, the registry, the transport's default, the default). Signatures are sigstore signatures that
`os publish --sign-by` attaches to the image in the registry itself (a tag next to it, `sha256-DIGEST.sig`), so
they travel with the image; registries.d tells skopeo and Podman to look for them there.

`os switch REF --require-signed KEY` writes the three pieces into the machine's /etc, where they are local
changes that every later deployment keeps through the /etc merge: the public key under /etc/pki/containers, a
`sigstoreSigned` requirement for REF's repository in policy.json, and `use-sigstore-attachments` for it in
registries.d. A person may write the same by hand; `os` verifies against whatever the machine's policy says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arkes.errors import UsageError

POLICY = "containers/policy.json"  # below /etc
REGISTRIES_D = "containers/registries.d"
KEYS = "pki/containers"
# What a machine without a policy file accepts: what Debian's containers-common ships.
ACCEPT_ANYTHING: dict[str, Any] = {"default": [{"type": "insecureAcceptAnything"}]}
_PUBLIC_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n?")


@dataclass(frozen=True)
class Requirement:
    """What a policy asks of an image: `type` as policy.json names it, and the keys it verifies with."""

    type: str
    keys: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.type == "insecureAcceptAnything":
            return "no signature"
        if self.type == "reject":
            return "what no image can give (every image is rejected)"
        kinds = {
            "sigstoreSigned": "a sigstore signature",
            "signedBy": "a GPG signature",
            "gpgSigned": "a GPG signature",
        }
        kind = kinds.get(self.type, self.type)
        return f"{kind} by {', '.join(self.keys)}" if self.keys else kind


@dataclass(frozen=True)
class Verification:
    """What a machine's policy requires of one repository's images, and which of its scopes says so."""

    scope: str
    requirements: tuple[Requirement, ...]

    @property
    def signed(self) -> bool:
        return any(r.type in ("sigstoreSigned", "signedBy", "gpgSigned") for r in self.requirements)

    def describe(self) -> str:
        said = " and ".join(r.describe() for r in self.requirements) or "nothing"
        where = self.scope if self.scope.startswith("ostree remote") else f"policy.json: {self.scope}"
        return f"{said} ({where})"


def repository(ref: str) -> str:
    """REGISTRY/NAME of a reference REGISTRY/NAME:TAG or REGISTRY/NAME@DIGEST."""
    name = ref.partition("@")[0]
    last = name.rpartition("/")[2]
    return name.rpartition(":")[0] if ":" in last else name


def scopes(ref: str) -> list[str]:
    """The scopes of policy.json's docker transport that can apply to `ref`, the most specific first."""
    repo = repository(ref)
    found = [ref] if ref != repo else []
    parts = repo.split("/")
    found += ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    host = parts[0].partition(":")[0]
    labels = host.split(".")
    found += ["*." + ".".join(labels[n:]) for n in range(1, len(labels))] if not host[:1].isdigit() else []
    return found


def load(etc: Path) -> dict[str, Any]:
    """The machine's policy.json; what Debian ships when it has none."""
    path = etc / POLICY
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return dict(ACCEPT_ANYTHING)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a policy this machine can use: {e}") from None
    if not isinstance(document, dict) or not isinstance(document.get("default", []), list):
        raise UsageError(f'{path}: not a containers policy (it needs a "default" list of requirements)')
    return document


def _requirements(listed: object) -> tuple[Requirement, ...]:
    found = []
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, dict):
            continue
        keys = [entry["keyPath"]] if isinstance(entry.get("keyPath"), str) else []
        keys += [k for k in entry.get("keyPaths", []) if isinstance(k, str)]
        if "keyData" in entry or "keyDatas" in entry:
            keys.append("(a key written in policy.json)")
        found.append(Requirement(str(entry.get("type", "")), tuple(keys)))
    return tuple(found)


def verification(document: dict[str, Any], ref: str) -> Verification:
    """What `document` (a policy.json) requires of `ref`'s images."""
    docker = document.get("transports", {}).get("docker", {})
    if isinstance(docker, dict):
        for scope in scopes(ref):
            if scope in docker:
                return Verification(scope, _requirements(docker[scope]))
        if "" in docker:
            return Verification("docker default", _requirements(docker[""]))
    return Verification("default", _requirements(document.get("default", [])))


def of_machine(etc: Path, ref: str) -> Verification:
    return verification(load(etc), ref)


def read_public_key(path: Path) -> str:
    """A sigstore public key file (PEM, as `os keygen` or `skopeo generate-sigstore-key` writes it)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the public key: {getattr(e, 'strerror', None) or e}") from None
    if "BEGIN PGP PUBLIC KEY" in text:
        raise UsageError(
            f"{path} is a GPG key; published systems are signed with sigstore keys",
            hint="make a key pair with `os keygen PREFIX` and publish with `os publish --sign-by PREFIX.private`",
        )
    if not _PUBLIC_KEY.fullmatch(text.strip() + "\n"):
        raise UsageError(f"{path} is not a public key (a PEM file that begins with -----BEGIN PUBLIC KEY-----)")
    return text


def key_name(ref: str) -> str:
    """The file name of the key a machine keeps for `ref`'s repository: /etc/pki/containers/NAME."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", repository(ref)) + ".pub"


def requiring(document: dict[str, Any], ref: str, key_path: str) -> dict[str, Any]:
    """`document` with a sigstore signature by the key at `key_path` required of every image of `ref`'s repository."""
    changed: dict[str, Any] = json.loads(json.dumps(document))
    docker = changed.setdefault("transports", {}).setdefault("docker", {})
    docker[repository(ref)] = [
        {"type": "sigstoreSigned", "keyPath": key_path, "signedIdentity": {"type": "matchRepository"}}
    ]
    return changed


def attachments(ref: str) -> str:
    """A registries.d file that has skopeo and Podman read and write signatures next to `ref`'s images."""
    return f"docker:\n  {repository(ref)}:\n    use-sigstore-attachments: true\n"


@dataclass(frozen=True)
class ForCopy:
    """A policy and a registries.d for one copy, as files a skopeo can read."""

    policy: Path
    registries_d: Path


@contextmanager
def for_copy(etc: Path, ref: str, key: str | None = None) -> Iterator[ForCopy]:
    """The policy of the machine whose /etc is `etc` (the keys it names found there, wherever it is mounted), and
    its registries.d plus signature attachments for `ref`'s repository where no file there speaks of it, in a
    temporary directory; with `key` (a public key's text), a signature by it required of `ref`'s repository."""
    rooted = load(etc)
    if etc != Path("/etc"):
        for requirements in [rooted.get("default", []), *_scoped(rooted)]:
            for entry in requirements if isinstance(requirements, list) else []:
                if isinstance(entry, dict):
                    _reroot(entry, etc)
    import tempfile  # not for `os status`

    registries_d = etc / REGISTRIES_D
    with tempfile.TemporaryDirectory(prefix="arkes-trust-") as tmp:
        if key is not None:
            (Path(tmp) / "key.pub").write_text(key)
            rooted = requiring(rooted, ref, str(Path(tmp) / "key.pub"))
        policy = Path(tmp) / "policy.json"
        policy.write_text(json.dumps(rooted, indent=2) + "\n")
        directory = Path(tmp) / "registries.d"
        directory.mkdir()
        spoken = False
        for path in sorted(registries_d.glob("*.yaml")):
            text = path.read_text()
            spoken = spoken or re.search(rf"^\s+{re.escape(repository(ref))}:", text, re.MULTILINE) is not None
            (directory / path.name).write_text(text)
        if not spoken:
            (directory / "zz-arkes-follow.yaml").write_text(attachments(ref))
        yield ForCopy(policy, directory)


def _scoped(document: dict[str, Any]) -> list[object]:
    transports = document.get("transports", {})
    return [r for scopes in transports.values() if isinstance(scopes, dict) for r in scopes.values()]


def _reroot(entry: dict[str, Any], etc: Path) -> None:
    """Key paths under /etc, found in the machine's /etc where it is mounted."""

    def moved(path: object) -> object:
        if isinstance(path, str) and path.startswith("/etc/"):
            return str(etc / path.removeprefix("/etc/"))
        return path

    if "keyPath" in entry:
        entry["keyPath"] = moved(entry["keyPath"])
    if isinstance(entry.get("keyPaths"), list):
        entry["keyPaths"] = [moved(p) for p in entry["keyPaths"]]


@contextmanager
def installed(etc: Path, ref: str, key: str) -> Iterator[Verification]:
    """Have the machine whose /etc is `etc` require `key`'s signature of `ref`'s repository from now on: the key,
    the policy and the registries.d file, each written whole. When the block fails, the three are put back as
    they were."""
    from arkes.bootloader import atomic_write

    key_path = etc / KEYS / key_name(ref)
    attach = etc / REGISTRIES_D / f"arkes-{key_name(ref).removesuffix('.pub')}.yaml"
    policy = requiring(load(etc), ref, f"/etc/{KEYS}/{key_name(ref)}")
    before = {path: path.read_bytes() if path.is_file() else None for path in (key_path, attach, etc / POLICY)}
    try:
        for path, text in ((key_path, key), (attach, attachments(ref)), (etc / POLICY, json.dumps(policy, indent=4))):
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text if text.endswith("\n") else text + "\n", mode=0o644)
        yield verification(policy, ref)
    except BaseException:
        for path, old in before.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, old.decode(), mode=0o644)
        raise
