"""Where `os` acts: the booted system or a sysroot directory, with its /etc, /var, Systemfile, kernel arguments
and state directory. The CLI resolves it once, before a command starts, and hands it down; no module below works
out for itself where the machine's files are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from arkes.errors import ArkesError, UsageError
from arkes.names import STATEROOT

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

BOOTED_MARKER = Path("/run/ostree-booted")
SYSTEM_DIR = "etc/system"
STATE_DIR = "lib/arkes"  # below the machine's /var
UPDATE_CHECK = "checkupdates.json"  # in the state directory


def is_booted_root(path: Path) -> bool:
    """Whether `path` is the root of the running Arkēs system (and not a sysroot directory)."""
    return path == Path("/") and BOOTED_MARKER.exists()


def var_dir(path: Path) -> Path:
    """The /var of the system at `path`: the running one on a booted system, else the stateroot's."""
    return Path("/var") if is_booted_root(path) else path / "ostree/deploy" / STATEROOT / "var"


def machine_etc(path: Path, default: Path | None) -> Path | None:
    """The /etc of the system at `path`: the running one on a booted system, else that of the default deployment
    (`default`, its directory); None while there is none."""
    if is_booted_root(path):
        return Path("/etc")
    return default / "etc" if default is not None else None


def machine_kargs(system_dir: Path) -> tuple[str, ...]:
    """The machine's own kernel arguments: /etc/system/kargs, one or more per line, `#` comments."""
    from arkes import tree  # not for `os status`, which needs this module's paths alone

    path = system_dir / "kargs"
    return tuple(tree.read_kargs(path.read_text())) if path.is_file() else ()


def given_path(sysroot: str | None) -> Path:
    """The sysroot a command names (`--sysroot`, else ARKES_SYSROOT), or / on a booted Arkēs system."""
    given = sysroot or os.environ.get("ARKES_SYSROOT")
    if given:
        return Path(given).absolute()
    if BOOTED_MARKER.exists():
        return Path("/")
    raise UsageError(
        "this machine is not a booted Arkēs system; `os` will not touch its root filesystem",
        hint="act on a sysroot directory with `os --sysroot DIR ...` (or ARKES_SYSROOT=DIR), "
        "e.g. `os --sysroot /tmp/sys install`",
    )


@dataclass(frozen=True)
class Target:
    """A system `os` acts on, as it was when the command started.

    `etc` is the running /etc on a booted system, else the default deployment's (None while there is none); `var`
    is the running /var or the stateroot's. `given_systemfile` is one named on the command line.
    """

    sysroot: Sysroot
    booted: bool
    etc: Path | None
    var: Path
    kargs: tuple[str, ...]
    given_systemfile: Path | None = None
    redeploy_failed: bool = False  # deploy a commit even when it failed a boot here (`os upgrade --force`)

    @classmethod
    def open(cls, path: Path, *, writes: bool = False, systemfile: Path | None = None) -> Target:
        """Open the system at `path`. `writes`: the command changes deployments, so on a booted system libostree
        gets a private mount namespace in which it may make /sysroot writable."""
        from arkes.ostree import Sysroot

        if not Sysroot.is_initialized(path):
            raise UsageError(f"{path} holds no Arkēs system", hint=f"install one with `os --sysroot {path} install`")
        sysroot = Sysroot.open(path, private_mounts=writes)
        default = sysroot.default()
        etc = machine_etc(path, sysroot.deployment_dir(default) if default is not None else None)
        kargs = machine_kargs(etc / "system") if etc is not None else ()
        given = systemfile.absolute() if systemfile is not None else None
        return cls(sysroot, is_booted_root(path), etc, var_dir(path), kargs, given)

    @property
    def path(self) -> Path:
        return self.sysroot.path

    @property
    def system_etc(self) -> Path:
        """The machine's /etc; an error on a sysroot that has no deployment yet."""
        if self.etc is None:
            raise ArkesError(f"{self.path} has no deployment", hint="install a system with `os --sysroot DIR install`")
        return self.etc

    @property
    def system_dir(self) -> Path:
        """/etc/system: the machine's Systemfile, its build context and its kernel arguments."""
        return self.system_etc / "system"

    @property
    def state_dir(self) -> Path:
        """What `os` keeps about this machine between runs, in its /var."""
        return self.var / STATE_DIR

    @property
    def update_check(self) -> Path:
        """The last `os checkupdates` report (see arkes.updates), which `os status` sums up."""
        return self.state_dir / UPDATE_CHECK

    @property
    def package_cache(self) -> Path:
        """The package repositories' releases as last fetched (see arkes.packages), for conditional requests."""
        return self.state_dir / "package-indexes.json"

    def systemfile(self) -> Path:
        """The Systemfile to build: the one given on the command line, else the machine's."""
        if self.given_systemfile is not None:
            if not self.given_systemfile.is_file():
                raise UsageError(f"{self.given_systemfile}: no such Systemfile")
            return self.given_systemfile.resolve()
        path = self.system_dir / "Systemfile"
        if not path.is_file():
            raise UsageError(f"{path}: no such Systemfile", hint="give one with --systemfile")
        return path
