"""Users and groups across upgrades: a three-way merge of the account databases, entry by entry and field by field.

OSTree merges /etc by whole files: once the machine has run `useradd`, its /etc/passwd is kept whole and every user
the new image adds (a package's `postgres`, the Systemfile's `carol`) is lost. Here each of passwd, group, shadow,
gshadow, subuid and subgid is merged by name, from three versions:

- base: the image's file the machine last merged with, kept in /etc/arkes/image-users (it travels with /etc);
- ours: the machine's file, with what people changed on it;
- theirs: the new image's file (its /usr/etc).

An entry the machine made is kept; one it deleted stays deleted; one the new image no longer has and the machine did
not make is gone; a new one of the image is added. In an entry both know, each field the machine changed keeps the
machine's value and the others take the image's, except that ids never change hands: a uid or gid stays the
machine's, so files in /var and /home keep their owners. Member lists merge as sets. A new entry whose id the
machine already gives someone else gets the lowest free id of its range instead, and the merge says so; files of
/usr owned by such an id cannot follow, so then the upgrade is refused before it deploys (see `usr_conflicts`).

The model is written down in docs/users.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

FILES = ("group", "passwd", "gshadow", "shadow", "subgid", "subuid")
BASE_DIR = "arkes/image-users"
_ID_FIELD = {"group": 2, "passwd": 2}
_SET_FIELDS = {"group": (3,), "gshadow": (2, 3)}
# Debian's ranges (adduser.conf, login.defs): dynamic system ids, then people.
SYSTEM_IDS = range(100, 1000)
PEOPLE_IDS = range(1000, 60000)
SUBORDINATE_START = 100000

Entries = dict[str, list[str]]


def parse(text: str) -> Entries:
    """name → fields, in file order; a name given twice keeps its first entry (as NSS reads it)."""
    entries: Entries = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        entries.setdefault(fields[0], fields)
    return entries


def render(entries: Entries) -> str:
    return "".join(":".join(fields) + "\n" for fields in entries.values())


@dataclass(frozen=True)
class Remap:
    """A new entry of the image that takes another id, because the machine gives its id to someone else."""

    kind: str  # "uid", "gid", "subuid", "subgid"
    name: str
    image_id: int
    new_id: int
    holder: str  # who has the id on the machine
    gone: bool = False  # the holder is removed, but files may still be theirs

    def line(self) -> str:
        held = f"{self.kind} {self.image_id} {'was' if self.gone else 'is'} {self.holder}'s on this machine"
        return f"{self.name}: {held}; {self.name} gets {self.new_id}"


@dataclass
class Merged:
    """The merged files (name → text), and what the merge did, for the log."""

    files: dict[str, str] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    remaps: list[Remap] = field(default_factory=list)

    def uid_map(self) -> dict[int, int]:
        return {r.image_id: r.new_id for r in self.remaps if r.kind == "uid"}

    def gid_map(self) -> dict[int, int]:
        return {r.image_id: r.new_id for r in self.remaps if r.kind == "gid"}


def _merge_set(base: str, ours: str, theirs: str) -> str:
    b, o = (set(filter(None, v.split(","))) for v in (base, ours))
    kept = [m for m in filter(None, theirs.split(",")) if m not in b - o]
    kept += [m for m in filter(None, ours.split(",")) if m not in b and m not in kept]
    return ",".join(kept)


def _merge_entry(kind: str, base: list[str], ours: list[str], theirs: list[str]) -> list[str]:
    width = max(len(base), len(ours), len(theirs))
    b, o, t = ([*f, *[""] * (width - len(f))] for f in (base, ours, theirs))
    merged = []
    for i in range(width):
        if i == _ID_FIELD.get(kind) or (kind == "passwd" and i == 3):
            merged.append(o[i])  # ids stay the machine's
        elif i in _SET_FIELDS.get(kind, ()):
            merged.append(_merge_set(b[i], o[i], t[i]))
        else:
            merged.append(o[i] if o[i] != b[i] else t[i])
    while len(merged) > len(ours) and len(merged) > len(theirs) and merged[-1] == "":
        merged.pop()
    return merged


def _free(taken: set[int], wanted: int) -> int:
    for span in (SYSTEM_IDS, PEOPLE_IDS):
        if wanted in span:
            for candidate in span:
                if candidate not in taken:
                    return candidate
    candidate = max(taken | {wanted}) + 1
    return candidate


def _merge_file(kind: str, base: Entries, ours: Entries, theirs: Entries, merged: Merged) -> tuple[Entries, Entries]:
    """The merged entries, and the image's new entries (not yet placed, ids unchecked)."""
    result: Entries = {}
    for name, fields in ours.items():
        if name in base and name not in theirs:
            if kind in ("passwd", "group"):
                merged.removed.append(f"{'user' if kind == 'passwd' else 'group'} {name}")
            continue
        result[name] = _merge_entry(kind, base[name], fields, theirs[name]) if name in base else fields
    new = {name: list(fields) for name, fields in theirs.items() if name not in ours and name not in base}
    return result, new


def _ids(entries: Entries, position: int) -> set[int]:
    return {int(f[position]) for f in entries.values() if len(f) > position and f[position].isdigit()}


def _place_ids(kind: str, result: Entries, new: Entries, merged: Merged, seen: list[Entries]) -> None:
    """Give each new entry its id, or the lowest free one of its range when someone on the machine has it. Free
    means no one's in any version: an id a removed user had may still own files in /var and /home."""
    position = _ID_FIELD[kind]
    holders = {int(f[position]): n for n, f in result.items() if len(f) > position and f[position].isdigit()}
    former = {
        int(f[position]): n
        for entries in seen[:2]
        for n, f in entries.items()
        if len(f) > position and f[position].isdigit() and n not in result and n not in new
    }
    taken = set(holders).union(*(_ids(entries, position) for entries in seen))
    for name, fields in new.items():
        if len(fields) > position and fields[position].isdigit():
            wanted = int(fields[position])
            if wanted in holders or wanted in former:
                placed = _free(taken, wanted)
                holder, gone = (holders[wanted], False) if wanted in holders else (former[wanted], True)
                what = "uid" if kind == "passwd" else "gid"
                merged.remaps.append(Remap(what, name, wanted, placed, holder, gone))
                fields[position] = str(placed)
                wanted = placed
            holders[wanted] = name
            taken.add(wanted)
        result[name] = fields
        merged.added.append(f"{'user' if kind == 'passwd' else 'group'} {name}")


def _place_ranges(kind: str, result: Entries, new: Entries, merged: Merged) -> None:
    def span(fields: list[str]) -> tuple[int, int] | None:
        if len(fields) >= 3 and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[1]) + int(fields[2])
        return None

    spans = {n: s for n, f in result.items() if (s := span(f))}
    for name, fields in new.items():
        wanted = span(fields)
        if wanted is not None:
            clash = next((n for n, (a, b) in spans.items() if wanted[0] < b and a < wanted[1]), None)
            if clash is not None:
                start = max([SUBORDINATE_START, *(b for _, b in spans.values())])
                count = wanted[1] - wanted[0]
                merged.remaps.append(Remap(kind, name, wanted[0], start, clash))
                fields[1] = str(start)
                wanted = (start, start + count)
            spans[name] = wanted
        result[name] = fields


def merge(base: Mapping[str, str | None], ours: Mapping[str, str], theirs: Mapping[str, str]) -> Merged:
    """Merge each account file (name → text). A file without a base (a machine from before the merge kept one, or
    a first install) takes the image's entries the machine has as the base: the machine's changes to them stay."""
    merged = Merged()
    for kind in FILES:
        if kind not in ours and kind not in theirs:
            continue
        o, t = parse(ours.get(kind, "")), parse(theirs.get(kind, ""))
        known = base.get(kind)
        b = parse(known) if known is not None else {n: f for n, f in t.items() if n in o}
        result, new = _merge_file(kind, b, o, t, merged)
        if kind in _ID_FIELD:
            if kind == "passwd":
                gids = merged.gid_map()
                for fields in new.values():
                    if len(fields) > 3 and fields[3].isdigit() and int(fields[3]) in gids:
                        fields[3] = str(gids[int(fields[3])])
            _place_ids(kind, result, new, merged, [b, o, t])
        elif kind in ("subuid", "subgid"):
            _place_ranges(kind, result, new, merged)
        else:
            result.update(new)
        merged.files[kind] = render(result)
    return merged


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_like(path: Path, text: str, like: Path | None) -> None:
    """Replace `path` atomically, with the mode and owner of `like` (the file it replaces, or the image's)."""
    tmp = path.with_name(f".{path.name}.arkes-tmp")
    tmp.write_text(text)
    if like is not None and like.exists():
        st = like.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, path)


def read_files(directory: Path) -> dict[str, str]:
    return {k: text for k in FILES if (text := _read(directory / k)) is not None}


def plan(etc: Path, theirs: Mapping[str, str]) -> Merged:
    """The merge of the machine's /etc `etc` (and the base it keeps) with the image's files, changing nothing."""
    base = {k: _read(etc / BASE_DIR / k) for k in FILES}
    return merge(base, read_files(etc), theirs)


def in_step(etc: Path, usr_etc: Path) -> bool:
    """Whether the stored base is already the image's: the merge was done for this image."""
    stored = etc / BASE_DIR
    return all(_read(stored / k) == _read(usr_etc / k) for k in FILES)


def apply(etc: Path, usr_etc: Path, *, machine: Path | None = None) -> Merged:
    """Merge the account files of the machine's /etc (`machine`, by default `etc` itself) with the image's in
    `usr_etc`, write them into `etc`, and keep the image's as the next base. Files of the image's /etc owned by an
    id that moved are given the new id."""
    merged = plan(machine or etc, read_files(usr_etc))
    for kind, text in merged.files.items():
        if _read(etc / kind) != text:
            _write_like(etc / kind, text, etc / kind if (etc / kind).exists() else usr_etc / kind)
    _follow_ids(etc, usr_etc, merged.uid_map(), merged.gid_map())
    stored = etc / BASE_DIR
    stored.mkdir(parents=True, exist_ok=True)
    os.chmod(stored, 0o700)
    for kind in FILES:
        source = usr_etc / kind
        if source.is_file():
            shutil.copy2(source, stored / kind)
            os.chmod(stored / kind, 0o600)
        else:
            (stored / kind).unlink(missing_ok=True)
    return merged


def _follow_ids(etc: Path, usr_etc: Path, uids: Mapping[int, int], gids: Mapping[int, int]) -> None:
    """Give the new ids to the files /etc holds from the image (same path and owner in /usr/etc)."""
    if not uids and not gids:
        return
    for dirpath, dirnames, filenames in os.walk(usr_etc):
        for name in dirnames + filenames:
            image = Path(dirpath) / name
            local = etc / image.relative_to(usr_etc)
            try:
                ist, lst = image.lstat(), local.lstat()
            except FileNotFoundError:
                continue
            if (lst.st_uid, lst.st_gid) != (ist.st_uid, ist.st_gid):
                continue
            uid, gid = uids.get(lst.st_uid, lst.st_uid), gids.get(lst.st_gid, lst.st_gid)
            if (uid, gid) != (lst.st_uid, lst.st_gid):
                os.lchown(local, uid, gid)


def usr_conflicts(merged: Merged, owners: Callable[[], list[tuple[str, int, int]]]) -> list[str]:
    """Paths of the image's /usr owned by an id that the merge moves: /usr is read-only, they cannot follow.
    `owners()` lists (path, uid, gid) of the new tree's files; it is asked only when some id moves."""
    uids, gids = merged.uid_map(), merged.gid_map()
    if not uids and not gids:
        return []
    found = []
    for path, uid, gid in owners():
        if path.startswith(("/usr/etc/", "/usr/share/factory/")):
            continue  # copied into /etc and /var, where they do follow
        if uid in uids or gid in gids:
            found.append(path)
    return found


def log_lines(merged: Merged) -> list[str]:
    lines = []
    if merged.added:
        lines.append("users and groups the new image adds: " + ", ".join(merged.added))
    if merged.removed:
        lines.append("users and groups the new image no longer has: " + ", ".join(merged.removed))
    lines += [r.line() for r in merged.remaps]
    return lines
