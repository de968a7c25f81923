"""The machine's /etc across deployments: what it changed against the image (the overlay), what the new image cannot
merge with, and what a new deployment's /etc needs beyond OSTree's 3-way merge — the users and groups merged entry
by entry (the merge itself is arkes.users) and no link left to a unit the image no longer ships.

OSTree merges /etc by whole files when it deploys, or at shutdown for a staged deployment; `finish` runs right after
that, on deploy or on the first boot of a staged deployment (arkes-etc-merge.service, `os etc-merge`).
"""

from __future__ import annotations

import filecmp
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from arkes import log, run, services, users
from arkes.errors import ArkesError
from arkes.results import Change

if TYPE_CHECKING:
    from arkes.ostree import Sysroot

# Asks the next boot to run `os etc-merge` (arkes-etc-merge.service's condition); removed when it has run.
MERGE_PENDING = "arkes/etc-merge-pending"


def _describe(path: Path) -> str:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"link:{os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file"


def overlay(etc: Path, defaults: Path) -> list[Change]:
    """Files of `etc` added, modified or removed relative to the image's defaults (`usr/etc`)."""
    changes: list[Change] = []

    def walk(relative: str) -> None:
        here, there = etc / relative, defaults / relative
        names = set(os.listdir(here)) if here.is_dir() and not here.is_symlink() else set()
        default_names = set(os.listdir(there)) if there.is_dir() and not there.is_symlink() else set()
        for name in sorted(names | default_names):
            rel = f"{relative}/{name}" if relative else name
            mine, image = etc / rel, defaults / rel
            if name not in default_names:
                changes.append(Change("added", f"/etc/{rel}"))
            elif name not in names:
                changes.append(Change("removed", f"/etc/{rel}"))
            else:
                a, b = _describe(image), _describe(mine)
                if a != b:
                    changes.append(Change("modified", f"/etc/{rel}", a, b))
                elif a == "dir":
                    walk(rel)
                elif a == "file":
                    same_mode = stat.S_IMODE(mine.lstat().st_mode) == stat.S_IMODE(image.lstat().st_mode)
                    if not same_mode or not filecmp.cmp(mine, image, shallow=False):
                        changes.append(Change("modified", f"/etc/{rel}"))

    walk("")
    return changes


def check_conflicts(sysroot: Sysroot, checksum: str, etc: Path, defaults: Path) -> None:
    """Refuse when a local change in /etc and the new image disagree on what a path is (file against directory)."""
    conflicts = []
    for change in overlay(etc, defaults):
        if change.kind == "removed":
            continue
        relative = change.name.removeprefix("/etc/")
        new_is_dir = sysroot.commit_is_dir(checksum, f"usr/etc/{relative}")
        if new_is_dir is None:
            continue
        local = etc / relative
        local_is_dir = local.is_dir() and not local.is_symlink()
        if new_is_dir != local_is_dir:
            mine = "a directory" if local_is_dir else "a file"
            theirs = "a directory" if new_is_dir else "a file"
            conflicts.append(f"{change.name}: this machine has {mine}, the new image has {theirs}")
    if conflicts:
        raise ArkesError(
            "the new deployment's /etc cannot be merged with this machine's:\n"
            + "\n".join(f"  {c}" for c in conflicts),
            hint="move the local path out of the way (or change the Systemfile), then upgrade again",
        )


def check_users(sysroot: Sysroot, checksum: str, etc: Path) -> None:
    """Say what the merge of users and groups will do, and refuse when the image's /usr holds files of a user or
    group that must take another id on this machine."""
    theirs = {
        kind: data.decode()
        for kind in users.FILES
        if (data := sysroot.read_commit_file(checksum, f"usr/etc/{kind}")) is not None
    }
    merged = users.plan(etc, theirs)
    for line in users.log_lines(merged):
        log.info(line)

    def owners() -> list[tuple[str, int, int]]:
        listing = run.run(["ostree", "ls", "-R", f"--repo={sysroot.repo_path}", checksum, "/usr"], what="ostree ls")
        found = []
        for line in listing.stdout.splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[1].isdigit() and fields[2].isdigit():
                found.append((fields[4].split(" -> ")[0], int(fields[1]), int(fields[2])))
        return found

    conflicts = users.usr_conflicts(merged, owners)
    if conflicts:
        shown = "\n".join(f"  {path}" for path in conflicts[:10])
        more = f"\n  ... and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        moved = "; ".join(r.line() for r in merged.remaps if r.kind in ("uid", "gid"))
        raise ArkesError(
            f"the new image gives an id that this machine uses for someone else, and owns files in /usr by it "
            f"({moved}):\n{shown}{more}",
            hint="give the user a free id in the Systemfile (useradd --uid), or own those files by root",
        )


def finish(etc: Path, usr_etc: Path, *, quiet: bool = False) -> None:
    """What a new deployment's /etc needs beyond OSTree's merge: the users and groups merged (arkes.users), and no
    link left to a unit the image no longer ships. Run on deploy, or on the first boot of a staged deployment."""
    if not users.in_step(etc, usr_etc):
        merged = users.apply(etc, usr_etc)
        if not quiet:
            for line in users.log_lines(merged):
                log.info(line)
    for link in services.remove_dangling(etc.parent):
        log.info(f"removed {link}: the new image no longer ships its unit")
    (etc / MERGE_PENDING).unlink(missing_ok=True)


def mark_pending(etc: Path, checksum: str) -> None:
    """Ask the first boot of a staged deployment to `finish` its /etc: written into the running /etc, which OSTree
    carries into the new deployment's at shutdown (a boot without a staged upgrade does not start Python)."""
    pending = etc / MERGE_PENDING
    pending.parent.mkdir(parents=True, exist_ok=True)
    pending.write_text(f"{checksum}\n")


def carry_users(target: Path, machine: Path) -> list[str]:
    """Give the deployment whose root is `target` the users and groups of the machine's /etc (`machine`): OSTree
    keeps each deployment's /etc apart, and a rollback must not lose the accounts made since. Returns what to say."""
    return users.log_lines(users.apply(target / "etc", target / "usr/etc", machine=machine))
