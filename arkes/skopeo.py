"""The distribution's skopeo: images copied between a registry and the container storage, signed on the way out
and verified against a trust policy on the way in, and the keys that sign them.

On an Arkēs system it is the system's own skopeo. Anywhere else it is the skopeo of the distribution's base
image, run in a container over the host's container storage as Buildah is (see arkes.builder): the images it
pulls land where the host's Podman finds them, and signing and verification work the same on every host (Debian
12's skopeo has sigstore signatures switched off). The host's registries.conf (or CONTAINERS_REGISTRIES_CONF)
and its `podman login` credentials go with it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from arkes import builder, images, run
from arkes.errors import ArkesError, CommandError, UsageError
from arkes.trust import ForCopy

# Where the container finds what `os` hands it from the host.
_INSIDE = Path("/run/arkes/skopeo")
# Where skopeo keeps what it learnt of blobs, for root, and the file it keeps it in (containers/image's SQLite
# cache, whose table of compressed and uncompressed digests is the one thing `os` writes to).
_CACHE = "/var/lib/containers/cache"
_CACHE_FILE = "blob-info-cache-v1.sqlite"
_COMPRESSED = ("+gzip", "+zstd", ".gzip", ".zstd")
# What skopeo says when an image fails the policy or its data, and what that means for a person.
_ALTERED = "what the registry sent is not what was published: the image was altered after it was published"
_REFUSALS = (
    ("a signature was required, but no signature exists", "it is not signed, and this machine requires a signature"),
    ("signature verification failed", "it is not signed by the key this machine's policy names"),
    ("signature for digest", "its signature was made for another image, not this one"),
    ("is not accepted", "its signature was made for another image name, not this one"),
    ("does not match", _ALTERED),
    ("digest did not match", _ALTERED),
    ("running image docker", "this machine's policy rejects images from there"),
)


@dataclass(frozen=True)
class Signing:
    """A sigstore private key file and a file whose first line is its passphrase."""

    key: Path
    passphrase: Path


def on_host() -> list[str]:
    """This machine's own skopeo, for what needs no signature (asking a registry for a digest: it starts in a
    tenth of the time), told of a registries.conf named by CONTAINERS_REGISTRIES_CONF, which Podman reads but
    skopeo 1.9 (Debian 12's) does not."""
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    return ["skopeo", *(["--registries-conf", conf] if conf else [])]


def _registries_conf() -> Path | None:
    configured = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    path = Path(configured) if configured else Path("/etc/containers/registries.conf")
    return path if path.is_file() else None


def _auth_file() -> Path | None:
    """The credentials `podman login` wrote for root, as Podman finds them."""
    candidates = [os.environ.get("REGISTRY_AUTH_FILE"), "/run/containers/0/auth.json"]
    candidates.append(str(Path.home() / ".docker/config.json"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


class _Argv:
    """A skopeo command line: native, or in the base image's container with each host path mounted."""

    def __init__(self, cache: Path | None = None) -> None:
        self.native = builder.is_arkes_system()
        self.mounts: list[tuple[Path, str, str]] = []
        self.args: list[str] = []
        self.builder: builder.Builder | None = None
        self.cache = cache
        if not self.native:
            images.ensure(images.BASE)
            self.builder = builder.resolve(images.BASE, images.cache_dir())
            # What it learnt of blobs (which compressed blob a registry already has for a layer) is kept between
            # runs, as an installed skopeo keeps it: without it each push compresses and sends every layer again.
            if cache is None:
                cache = self.builder.state / "blob-info-cache"
                cache.mkdir(parents=True, exist_ok=True)
            self.mounts.append((cache, _CACHE, "rw"))
            if (conf := _registries_conf()) is not None:
                self.args += ["--registries-conf", self.host(conf, "registries.conf")]
        elif configured := os.environ.get("CONTAINERS_REGISTRIES_CONF"):
            self.args += ["--registries-conf", configured]

    def host(self, path: Path, name: str, *, writable: bool = False) -> str:
        """Where skopeo finds the host's `path`: itself, or a mount of it named `name`."""
        if self.native:
            return os.fspath(path)
        inside = f"{_INSIDE}/{name}"
        self.mounts.append((path.resolve(), inside, "rw" if writable else "ro"))
        return inside

    def same(self, path: Path) -> str:
        """The host's `path` at the same path in the container (where other files name it so)."""
        if not self.native:
            self.mounts.append((path.resolve(), os.fspath(path), "ro"))
        return os.fspath(path)

    def storage(self, image: str) -> str:
        if self.builder is None:
            return f"containers-storage:{image}"
        b = self.builder
        return f"containers-storage:[{b.driver}@{b.graphroot}+{b.runroot}]{image}"

    def command(self, args: list[str]) -> list[str]:
        if self.builder is None and self.cache is not None:
            # The system's skopeo with a cache of this command's own, mounted where it looks, seen by it alone.
            bind = f'mkdir -p {_CACHE} && mount --bind "$0" {_CACHE} && exec "$@"'
            private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", bind, os.fspath(self.cache)]
            return [*private, "skopeo", *self.args, *args]
        if self.builder is None:
            return ["skopeo", *self.args, *args]
        assert self.builder.image is not None
        return [*builder.container_run(self.builder, self.mounts), self.builder.image, "skopeo", *self.args, *args]


class Refused(ArkesError):
    """An image that failed the machine's policy or its own digests: nothing of it is used."""


def explained(error: CommandError, what: str) -> ArkesError:
    """A failed skopeo command as a person should read it: why an image was refused, where it was."""
    detail = error.message.lower()
    for needle, meaning in _REFUSALS:
        if needle in detail:
            said = _fatal(error.message)
            return Refused(
                f"{what} refused: {meaning}",
                hint=f"skopeo said: {said}\nnothing was pulled or deployed; `os status` shows what this machine's "
                "policy requires",
            )
    return error


def _fatal(message: str) -> str:
    """skopeo's own words from the tail of its output: the message of its `level=fatal` line."""
    for line in reversed(message.splitlines()):
        if 'msg="' in line:
            return line.partition('msg="')[2].rstrip('"').replace('\\"', '"')
    return message.splitlines()[-1] if message else ""


def pull(ref: str, image: str, trust: ForCopy, etc: Path, on_line: Callable[[str], None]) -> None:
    """Copy the registry's `ref` (by digest) into the container storage as `image`, verified against `trust`
    (whose keys are below `etc`, the machine's /etc). Layers the storage holds already are not downloaded."""
    with tempfile.TemporaryDirectory(prefix="arkes-pull-") as tmp:
        argv = _Argv(cache=Path(tmp))
        layer_pairs(ref, Path(tmp) / _CACHE_FILE)
        argv.same(trust.policy.parent)
        if etc != Path("/etc") and etc.is_dir():
            argv.same(etc)
        argv.args += ["--policy", os.fspath(trust.policy), "--registries.d", os.fspath(trust.registries_d)]
        args = ["copy", f"docker://{ref}", argv.storage(image)]
        if (auth := _auth_file()) is not None:
            args[1:1] = ["--src-authfile", argv.host(auth, "auth.json")]
        try:
            run.stream(argv.command(args), on_line, what=f"pulling {ref}")
        except CommandError as e:
            raise explained(e, f"pulling {ref}") from None


def layer_pairs(ref: str, cache: Path) -> int:
    """Tell the skopeo of one pull, through a cache file of its own (`cache`), which uncompressed layer each
    compressed blob of the image `ref` (by digest) unpacks to, as the image's configuration declares: the container
    storage then uses a layer it holds already (built here from the same base, or pulled before under another
    blob) instead of downloading it. skopeo learns this only from blobs it compressed or unpacked itself, so a
    machine that built its system or was installed from a disk image would otherwise download every layer of the
    first published system it follows. Only what the manifest pulled by digest binds is written, and only for this
    pull (the machine's own cache never learns a claim it did not check); the copy still verifies the signatures
    the policy requires. Returns how many pairs were written (none when the registry cannot say)."""
    if "@sha256:" not in ref:
        return 0
    try:
        raw = run.run([*on_host(), "inspect", "--raw", f"docker://{ref}"], what=f"reading {ref}").stdout
        config = run.run([*on_host(), "inspect", "--config", "--raw", f"docker://{ref}"], what=f"reading {ref}").stdout
    except CommandError:
        return 0  # the copy itself says what is wrong with the registry
    pairs = declared_pairs(ref.rpartition("@")[2], raw, config)
    if pairs:
        with closing(sqlite3.connect(cache)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS DigestUncompressedPairs("
                "anyDigest TEXT PRIMARY KEY NOT NULL, uncompressedDigest TEXT NOT NULL)"
            )
            db.executemany("INSERT OR REPLACE INTO DigestUncompressedPairs VALUES (?, ?)", pairs)
    return len(pairs)


def declared_pairs(digest: str, manifest: str, config: str) -> list[tuple[str, str]]:
    """(compressed blob, uncompressed layer) for each compressed layer of an image manifest whose own digest is
    `digest` and whose configuration (`config`) it names; nothing for an index or text that does not match."""
    if "sha256:" + hashlib.sha256(manifest.encode()).hexdigest() != digest:
        return []
    try:
        parsed = json.loads(manifest)
        layers = parsed["layers"]
        named = parsed["config"]["digest"]
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        return []
    if "sha256:" + hashlib.sha256(config.encode()).hexdigest() != named or len(diff_ids) != len(layers):
        return []
    return [
        (layer["digest"], diff_id)
        for layer, diff_id in zip(layers, diff_ids, strict=True)
        if str(layer.get("mediaType", "")).endswith(_COMPRESSED) and layer["digest"] != diff_id
    ]


def push(image: str, ref: str, registries_d: Path, on_line: Callable[[str], None], signing: Signing | None) -> str:
    """Copy `image` from the container storage to the registry's `ref` as an OCI image, signed by `signing`;
    return the digest of the manifest pushed."""
    argv = _Argv()
    argv.args += ["--registries.d", argv.host(registries_d, "registries.d")]
    with tempfile.TemporaryDirectory(prefix="arkes-push-") as tmp:
        args = ["copy", "--format", "oci", "--digestfile", f"{argv.host(Path(tmp), 'out', writable=True)}/digest"]
        if signing is not None:
            args += ["--sign-by-sigstore-private-key", argv.host(signing.key, "key")]
            args += ["--sign-passphrase-file", argv.host(signing.passphrase, "passphrase")]
        if (auth := _auth_file()) is not None:
            args += ["--dest-authfile", argv.host(auth, "auth.json")]
        args += [argv.storage(image), f"docker://{ref}"]
        try:
            run.stream(argv.command(args), on_line, what=f"pushing to {ref}")
        except CommandError as e:
            if signing is not None and ("decrypt" in e.message or "passphrase" in e.message):
                raise UsageError(f"the passphrase does not open {signing.key}; nothing was pushed") from None
            raise
        return (Path(tmp) / "digest").read_text().strip()


def generate_key(prefix: Path, passphrase: Path) -> tuple[Path, Path]:
    """A new sigstore key pair: PREFIX.private (encrypted with the passphrase) and PREFIX.pub."""
    private, public = prefix.with_name(prefix.name + ".private"), prefix.with_name(prefix.name + ".pub")
    for path in (private, public):
        if path.exists():
            raise UsageError(f"{path} exists already; `os keygen` never overwrites a key")
    if not prefix.parent.is_dir():
        raise UsageError(f"{prefix.parent}: no such directory")
    argv = _Argv()
    out = argv.host(prefix.parent, "out", writable=True)
    args = ["generate-sigstore-key", "--output-prefix", f"{out}/{prefix.name}"]
    args += ["--passphrase-file", argv.host(passphrase, "passphrase")]
    run.run(argv.command(args), what="making a signing key")
    private.chmod(0o600)
    return private, public


@contextmanager
def passphrase_file(given: str | None, *, confirm: bool) -> Iterator[Path]:
    """The file that holds a key's passphrase: the one given, or one written (mode 0600, removed afterwards) from
    what the person types at the terminal."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"{given}: no such passphrase file")
        yield path
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "the key's passphrase is needed and there is no terminal to ask it on",
            hint="give a file whose first line is the passphrase with --passphrase-file",
        )
    typed = getpass.getpass("Passphrase of the signing key: ")
    if confirm and getpass.getpass("The same passphrase again: ") != typed:
        raise UsageError("the two passphrases differ")
    with tempfile.TemporaryDirectory(prefix="arkes-passphrase-") as tmp:
        path = Path(tmp) / "passphrase"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(typed + "\n")
        yield path
