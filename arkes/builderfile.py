"""The Systemfile as the builder reads it: the same build, said in the syntax the distribution's Buildah knows.

`os check` follows BuildKit's current grammar. Some of what it accepts, Buildah 1.39 (the distribution's builder)
refuses or misreads although it can build the result; that is rewritten here, line for line, so that whatever the
builder says still points at the Systemfile's own lines:

- `# escape=` moves first among the parser directives: Buildah honours it only there, BuildKit anywhere among them.
- `COPY --link` and `ADD --link` lose the flag: it changes how BuildKit caches and rebases the layer, not what the
  layer holds, and the tree is what a system is made of.
- `RUN --security=sandbox` loses the flag: it is the default.
- `<< EOF` becomes `<<EOF`: BuildKit allows blanks between the operator and the heredoc's name, Buildah 1.39 (whose
  parser is BuildKit v0.19's) does not see a heredoc there and would read its body as instructions.
- `COPY --parents SRC... DEST` becomes `COPY --from=CONTEXT . DEST`, CONTEXT being a build context staged here that
  holds each source at its path in the build context (or below its `/./` pivot), which is what --parents copies.

Given a package state (see arkes.packages), one step is added after the last line: `update_packages` with that
state in its command line. Every layer above it stays cached while the Systemfile is unchanged; when the
repositories publish new versions, the state and so this step change, and it alone runs again, bringing every
installed package up to date. When the Systemfile changed, the step runs after the changed lines; given the
fingerprint of the packages of an image it brought up to date at the same state, it leaves an image with the same
fingerprint as it is without asking the repositories. (`os` builds a changed Systemfile without the step first,
and adds it only when the new image's fingerprint is another: see arkes.build.build.)
"""

from __future__ import annotations

import glob
import json
import posixpath
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from arkes.errors import ValidationError
from arkes.systemfile import Instruction, Systemfile

_DIRECTIVE = re.compile(r"^\s*#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=")
_LINK = re.compile(r"[ \t]+--link(?:=(?:true|false|1|0|True|False))?(?=\s)")
_SANDBOX = re.compile(r"[ \t]+--security=sandbox(?=\s)")
BOM = "\ufeff"


@dataclass(frozen=True)
class Translated:
    """The builder's Containerfile text and the extra build contexts it names (name → directory)."""

    text: str
    contexts: dict[str, Path] = field(default_factory=dict)


UPDATE_HELPER = "/usr/lib/system/update_packages"


def update_step(package_state: str, current: str = "") -> str:
    """The last step of every build whose image has package repositories (see the module's docstring). `current`:
    the fingerprint of packages already up to date at `package_state` (a helper's second argument)."""
    script = f'[ ! -x {UPDATE_HELPER} ] || exec {UPDATE_HELPER} "$0" "$1"'
    return "RUN " + json.dumps(["/bin/sh", "-c", script, package_state, current])


def translate(
    sf: Systemfile, context: Path, staging: Path, *, package_state: str = "", current_packages: str = ""
) -> Translated:
    """Rewrite `sf` for the builder; build contexts for `COPY --parents` are staged under `staging`.
    `current_packages`: see update_step."""
    lines = sf.text.removeprefix(BOM).split("\n")
    _escape_first(lines)
    contexts: dict[str, Path] = {}
    problems: list[str] = []
    for ins in sf.instructions:
        if ins.cmd in ("COPY", "ADD") and any(_flag_name(f) == "link" for f in ins.flags):
            _edit_first_lines(lines, ins, _LINK)
        if ins.cmd == "RUN" and "--security=sandbox" in ins.flags:
            _edit_first_lines(lines, ins, _SANDBOX)
        if ins.heredocs:
            _close_heredoc_openers(lines, ins)
        if ins.cmd == "COPY" and any(_flag_name(f) == "parents" and _is_true(f) for f in ins.flags):
            name = f"arkes-parents-{ins.start_line}"
            try:
                _stage_parents(ins, context, staging / name)
            except _Refused as exc:
                problems.append(f"{sf.path}:{ins.start_line}: COPY --parents: {exc}")
                continue
            contexts[name] = staging / name
            _replace(lines, ins, _copy_from(ins, name))
    if problems:
        raise ValidationError(problems, hint="copy those sources one COPY each, to their full destination path")
    if package_state:
        lines += ["", "# added by os: the package state of this build", update_step(package_state, current_packages)]
    return Translated("\n".join(lines), contexts)


class _Refused(Exception):
    pass


def _flag_name(flag: str) -> str:
    return flag.removeprefix("--").partition("=")[0]


def _is_true(flag: str) -> bool:
    _, equals, value = flag.partition("=")
    return not equals or value.lower() in ("true", "1")


def _escape_first(lines: list[str]) -> None:
    """Move an `escape` directive to the first line, keeping the other directives in order below it."""
    block = 0
    while block < len(lines) and _DIRECTIVE.match(lines[block]):
        block += 1
    for i in range(1, block):
        match = _DIRECTIVE.match(lines[i])
        if match and match[1].lower() == "escape":
            lines[: i + 1] = [lines[i], *lines[:i]]
            return


def _edit_first_lines(lines: list[str], ins: Instruction, flag: re.Pattern[str]) -> None:
    """Remove a flag where it is written: the flags come first, on the instruction's first lines."""
    for number in range(ins.start_line, ins.end_line + 1):
        padded = lines[number - 1] + " "
        edited, count = flag.subn("", padded, count=1)
        if count:
            lines[number - 1] = edited[:-1]
            return


def _close_heredoc_openers(lines: list[str], ins: Instruction) -> None:
    """`<< NAME` → `<<NAME` for each heredoc, in order: the openers come before the first body."""
    number, column = ins.start_line, 0
    for doc in ins.heredocs:
        opener = re.compile(r"<<-?([ \t]*)(?=([\"']?)" + re.escape(doc.name) + r"\2)")
        for at in range(number, ins.end_line + 1):
            line = lines[at - 1]
            found = opener.search(line, column if at == number else 0)
            if found:
                lines[at - 1] = line[: found.start(1)] + line[found.end(1) :]
                number, column = at, found.start(1)
                break


def _replace(lines: list[str], ins: Instruction, text: str) -> None:
    """Put `text` on the instruction's first line and blank the lines it continued on."""
    lines[ins.start_line - 1] = text
    for number in range(ins.start_line + 1, ins.end_line + 1):
        lines[number - 1] = ""


def _copy_from(ins: Instruction, name: str) -> str:
    kept = [f for f in ins.flags if _flag_name(f) not in ("parents", "link")]
    destination = ins.value[-1]
    return " ".join(["COPY", *kept, f"--from={name}", json.dumps([".", destination])])


def _stage_parents(ins: Instruction, context: Path, target: Path) -> None:
    """Copy each source of a `COPY --parents` into `target` at the path it keeps."""
    if any(_flag_name(f) == "from" for f in ins.flags):
        raise _Refused("the builder cannot keep parent directories of sources from another stage or image")
    sources = ins.value[:-1]
    if any(s.startswith("<<") for s in sources):
        raise _Refused("a heredoc has no parent directories")
    if any("$" in s for s in sources):
        raise _Refused("sources built from variables cannot be staged for the builder")
    target.mkdir(parents=True, exist_ok=True)
    root = context.resolve()
    for source in sources:
        pattern = source.lstrip("/")
        pivot = ""
        if "/./" in f"/{pattern}":
            pivot, _, _ = f"/{pattern}".partition("/./")
            pivot = pivot.strip("/")
            pattern = f"/{pattern}".replace("/./", "/", 1).lstrip("/")
        pattern = posixpath.normpath(pattern)
        if pattern == ".." or pattern.startswith("../"):
            raise _Refused(f"{source} is outside the build context")
        matches = (
            sorted(glob.glob(pattern, root_dir=root, recursive=True, include_hidden=True))
            if glob.has_magic(pattern)
            else [pattern]
        )
        for match in matches:
            path = root / match
            if not (path.exists() or path.is_symlink()):
                raise _Refused(f"{source} matches nothing in the build context")
            kept = posixpath.relpath(match, pivot) if pivot else match
            destination = target / ("" if kept == "." else kept)
            destination.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(path, destination, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(path, destination, follow_symlinks=False)
