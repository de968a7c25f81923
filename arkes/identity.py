"""Each machine's own identity: SSH host keys and the self-signed certificate packages make when installed.

No image carries them (tree.strip_identity, at build time); `arkes-identity.service` makes them on a machine's
first boot, into its /etc, where they are local files that every upgrade's 3-way merge keeps. Machines installed
from an image that still carried keys have them in /etc as copies of the image's defaults: OSTree's merge would
drop them when a new image has none, so `adopt` makes them the machine's own first, and records them as having
come from an image, which `os status` warns about until `os rotate-host-keys` replaces them.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import log
from arkes.errors import UsageError

if TYPE_CHECKING:
    from arkes.results import HostKey

# What makes one machine this machine, which packages generate when they are installed (at build time): no image
# carries it, or every machine made from it would share it. Each machine makes its own on its first boot
# (arkes-identity.service); /etc/machine-id stays, empty, which is how systemd knows a first boot.
IDENTITY = (
    "etc/ssh/ssh_host_*_key",
    "etc/ssh/ssh_host_*_key.pub",
    "etc/ssl/private/ssl-cert-snakeoil.key",
    "etc/ssl/certs/ssl-cert-snakeoil.pem",
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
    "var/lib/dbus/machine-id",
)
MACHINE_ID = "etc/machine-id"
# Those that live in /etc, relative to it.
ETC_IDENTITY = tuple(p.removeprefix("etc/") for p in IDENTITY if p.startswith("etc/"))
HOST_KEYS = "ssh/ssh_host_*_key"
# In the machine's state directory: the digests of identity files that came from an image (one per line).
FROM_IMAGE = "identity-from-image"


def files(etc: Path) -> list[Path]:
    """The identity files an /etc holds."""
    return sorted(path for pattern in ETC_IDENTITY for path in etc.glob(pattern) if path.is_file())


def _digest(path: Path) -> str:
    return _sha256(path.read_bytes())


def _sha256(data: bytes) -> str:
    import hashlib  # OpenSSL's library takes milliseconds to load; `os status` needs it only when there is a record

    return hashlib.sha256(data).hexdigest()


def _same(a: Path, b: Path) -> bool:
    if not b.is_file() or b.is_symlink():
        return False
    x, y = a.stat(), b.stat()
    same_meta = (x.st_mode, x.st_uid, x.st_gid, x.st_size) == (y.st_mode, y.st_uid, y.st_gid, y.st_size)
    return same_meta and a.read_bytes() == b.read_bytes()


def adopt(etc: Path, defaults: Path, state_dir: Path) -> list[Path]:
    """Make the identity files of `etc` that are unchanged copies of the image defaults (`defaults`, the merge
    deployment's /usr/etc) the machine's own, so that the merge into a new deployment keeps them; record them."""
    adopted = []
    for path in files(etc):
        relative = path.relative_to(etc)
        if not _same(path, defaults / relative):
            continue
        # OSTree's merge keeps a file whose content or metadata differ from the old defaults: flipping the owner's
        # write permission is that difference, and harmless to a key (sshd wants it unreadable to others only).
        os.chmod(path, stat.S_IMODE(path.stat().st_mode) ^ stat.S_IWUSR)
        adopted.append(path)
    if adopted:
        _record(state_dir, [_digest(p) for p in adopted])
        names = ", ".join(f"/etc/{p.relative_to(etc)}" for p in adopted)
        log.info(f"kept this machine's identity, which came with the image it was installed from: {names}")
        log.warn("other machines installed from that image have the same keys: run `os rotate-host-keys`")
    return adopted


def _record(state_dir: Path, digests: Iterable[str]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / FROM_IMAGE
    known = set(path.read_text().split()) if path.is_file() else set()
    known.update(digests)
    path.write_text("".join(f"{d}\n" for d in sorted(known)))


def from_image(etc: Path, state_dir: Path, defaults: Iterable[Path]) -> list[str]:
    """The identity files of `etc` (as /etc paths) that came from an image: recorded by `adopt`, or equal to a
    file at the same place in any deployment's /usr/etc (`defaults`)."""
    record = state_dir / FROM_IMAGE
    recorded = set(record.read_text().split()) if record.is_file() else set()
    found = []
    default_dirs = list(defaults)
    for path in files(etc):
        relative = path.relative_to(etc)
        try:
            data = path.read_bytes()
            shipped = any((d / relative).is_file() and (d / relative).read_bytes() == data for d in default_dirs)
        except OSError:
            continue  # a private key only root reads: `os status` run by someone else cannot tell
        if shipped or (recorded and _sha256(data) in recorded):
            found.append(f"/etc/{relative}")
    return found


def fingerprints(etc: Path) -> list[HostKey]:
    from arkes import run  # not for `os status`, which reads this module
    from arkes.results import HostKey

    keys = []
    for key in sorted(etc.glob(HOST_KEYS + ".pub")):
        printed = run.run(["ssh-keygen", "-l", "-f", key], what="ssh-keygen").stdout.split()
        # bits, SHA256:..., comment..., (TYPE)
        kind = printed[-1].strip("()") if printed else ""
        keys.append(HostKey(f"/etc/{key.relative_to(etc)}", kind, printed[1] if len(printed) > 1 else ""))
    return keys


def rotate(etc: Path, *, booted: bool) -> list[HostKey]:
    """Replace the machine's SSH host keys with new ones made here, and tell a running SSH server."""
    if not (etc / "ssh").is_dir():
        raise UsageError(f"{etc}/ssh does not exist: this system has no SSH server")
    for path in etc.glob(HOST_KEYS + "*"):
        path.unlink()
    # ssh-keygen -A makes every default key type; -f names the root it makes them under.
    from arkes import run

    argv: list[str | Path] = ["ssh-keygen", "-A"]
    if not booted:
        argv += ["-f", etc.parent]
    run.run(argv, what="ssh-keygen -A")
    if booted:
        run.run(["systemctl", "try-reload-or-restart", "ssh.service"], what="systemctl", check=False)
    return fingerprints(etc)


def carry(target_etc: Path, machine_etc: Path) -> list[str]:
    """Give another deployment's /etc the machine's identity files (a rollback must not bring back old keys)."""
    carried = []
    for path in files(machine_etc):
        relative = path.relative_to(machine_etc)
        there = target_etc / relative
        if there.is_file() and _same(path, there):
            continue
        there.parent.mkdir(parents=True, exist_ok=True)
        there.unlink(missing_ok=True)
        shutil.copy2(path, there)
        info = path.stat()
        os.chown(there, info.st_uid, info.st_gid)
        carried.append(f"/etc/{relative}")
    return [f"carried this machine's identity along: {', '.join(carried)}"] if carried else []
