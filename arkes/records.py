"""The records arkes.ostree hands out — deployments, commits and what `os` records in each commit — as plain frozen
data, with no libostree in them: code and tests that only read them need no PyGObject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Metadata:
    """What `os` records in each commit it makes, kept by arkes.ostree in the commit's metadata."""

    version: str = ""  # YYYYMMDD.N
    input_hash: str = ""
    base_image: str = ""
    base_digest: str = ""
    systemfile_sha256: str = ""
    packages: tuple[tuple[str, str], ...] = ()  # (name, version) of every installed package
    kargs: tuple[str, ...] = ()  # the image's own kernel arguments (kargs.d)
    tool_version: str = ""
    context: tuple[tuple[str, str], ...] = ()  # the build context's manifest: (path, entry)
    machine_kargs: tuple[str, ...] = ()  # /etc/system/kargs when it was built
    package_state: str = ""
    package_indexes: tuple[tuple[str, str], ...] = ()  # (release URL, sha256) of every package repository
    kernel: str = ""  # the kernel version that boots (OSTree's own key)
    allowed_secrets: tuple[str, ...] = ()  # private keys the image carries on purpose (--allow-secret)
    layers: tuple[str, ...] = ()  # the digests of the image layers the tree was made from, bottom first


@dataclass(frozen=True)
class Commit:
    checksum: str
    timestamp: int
    subject: str
    metadata: Metadata

    @property
    def version(self) -> str:
        return self.metadata.version


@dataclass(frozen=True)
class BootEntry:
    """Where a deployment's kernel and initramfs are in /boot, and its kernel command line."""

    linux: str
    initrd: str
    options: str

    @property
    def kernel(self) -> str:
        """The version of the kernel that boots: /ostree/arkes-BOOTCSUM/vmlinuz-VERSION."""
        return self.linux.rsplit("/", 1)[-1].removeprefix("vmlinuz-")


@dataclass(frozen=True)
class Deployment:
    """One deployment as libostree listed it when the sysroot was last loaded."""

    checksum: str
    serial: int
    stateroot: str
    root: Path  # its checkout: /ostree/deploy/STATEROOT/deploy/CHECKSUM.SERIAL
    booted: bool
    staged: bool
    pinned: bool
    unlocked: str  # none, development, hotfix or transient
    boot: BootEntry | None  # a staged one's files reach /boot only when OSTree finalizes it at shutdown
    origin: tuple[tuple[str, str], ...]  # the [arkes] group of its origin file

    @property
    def kargs(self) -> tuple[str, ...]:
        return tuple(self.boot.options.split()) if self.boot else ()

    def same(self, other: Deployment | None) -> bool:
        return other is not None and (self.stateroot, self.checksum, self.serial) == (
            other.stateroot,
            other.checksum,
            other.serial,
        )

    def origin_value(self, key: str) -> str:
        return dict(self.origin).get(key, "")
