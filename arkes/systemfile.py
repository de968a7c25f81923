"""Parse and validate a Systemfile (a Containerfile), reporting every problem as `PATH:LINE: message`.

Parsing is buildkit's own Go parser (the `dockerfile` package), so what we accept is what `podman build` and
`docker build` accept. That parser stops at the first error and its errors carry no line number, so `_parse`
finds the line itself, blanks the offending instruction and parses again until the rest is clean. The checks
after parsing catch what the parser lets through but a build would reject or silently get wrong.
"""

from __future__ import annotations

import difflib
import glob
import itertools
import json
import platform
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerfile

from arkes.errors import UsageError, ValidationError

INSTRUCTIONS = frozenset(
    {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER"}
    | {"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
)

# (minimum number of parsed arguments, what is missing) per instruction; FROM is checked on its own.
_NEEDS: dict[str, tuple[int, str]] = {
    "RUN": (1, "a command"),
    "CMD": (1, "a command"),
    "ENTRYPOINT": (1, "a command"),
    "COPY": (2, "a source and a destination"),
    "ADD": (2, "a source and a destination"),
    "ENV": (2, "NAME=value"),
    "LABEL": (2, "key=value"),
    "WORKDIR": (1, "a directory"),
    "USER": (1, "a user name or UID"),
    "ARG": (1, "a name (ARG NAME or ARG NAME=default)"),
    "EXPOSE": (1, "a port"),
    "VOLUME": (1, "a path"),
    "STOPSIGNAL": (1, "a signal"),
    "MAINTAINER": (1, "a name"),
    "SHELL": (1, 'a JSON array such as ["/bin/sh", "-c"]'),
    "HEALTHCHECK": (1, "NONE, or CMD followed by a command"),
    "ONBUILD": (1, "an instruction to run in images built FROM this one"),
}
_JSON_FORMS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# Where parsing resumes after an unterminated heredoc: the next line that looks like an instruction. Upper case
# only, because heredoc bodies are shell scripts and `env`, `user` or `add` start many of their lines.
_INSTRUCTION_LINE = re.compile(r"^\s*(?:{})(?:\s|$)".format("|".join(sorted(INSTRUCTIONS))))
_HEREDOC = re.compile(r"<<-?([\"']?)(\w+)\1")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?:(?P<op>:?[-+?])(?P<word>[^}]*))?\}|(?P<plain>\w+))")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class Instruction:
    """One instruction as the parser saw it; for ONBUILD, `value` starts with the trigger instruction."""

    cmd: str
    value: tuple[str, ...]
    json: bool
    flags: tuple[str, ...]
    start_line: int
    end_line: int
    original: str


@dataclass(frozen=True)
class Stage:
    """One FROM: the image (ARGs substituted), the lower-cased AS name, and whether it comes from outside."""

    base: str
    name: str | None
    line: int
    external: bool


@dataclass(frozen=True)
class Systemfile:
    """A parsed, valid Systemfile."""

    path: Path
    text: str
    instructions: tuple[Instruction, ...]
    stages: tuple[Stage, ...]

    @property
    def base_image(self) -> str:
        """The image the final stage is built on, following `FROM <stage>` back to an external image."""
        stage = self.stages[-1]
        while not stage.external and stage.base != "scratch":
            stage = next(s for s in self.stages if s.name == stage.base.lower() and s.line < stage.line)
        return stage.base

    @property
    def external_images(self) -> tuple[str, ...]:
        """Every distinct image pulled from outside, in order of first use."""
        return tuple(dict.fromkeys(s.base for s in self.stages if s.external))


def problems(path: Path, context: Path | None = None, build_args: Mapping[str, str] | None = None) -> list[str]:
    """Every problem as 'PATH:LINE: message', sorted by line; empty when valid. context defaults to path.parent.

    A missing or unreadable file (or context) is not a problem in the file: it raises UsageError.
    """
    return _analyse(path, context, build_args)[0]


def load(path: Path, context: Path | None = None, build_args: Mapping[str, str] | None = None) -> Systemfile:
    """Parse and validate; raise ValidationError listing every problem, UsageError if the file cannot be read."""
    found, systemfile = _analyse(path, context, build_args)
    if found:
        raise ValidationError(found, hint=f"fix {path} and run `os check` again")
    return systemfile


def _analyse(path: Path, context: Path | None, build_args: Mapping[str, str] | None) -> tuple[list[str], Systemfile]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror or exc}", hint="give the path of a Systemfile (a Containerfile)"
        ) from exc
    context = path.parent if context is None else context
    if not context.is_dir():
        raise UsageError(f"build context {context} is not a directory", hint="give the directory COPY reads from")
    found: list[tuple[int, str]] = []
    instructions: tuple[Instruction, ...] = ()
    stages: tuple[Stage, ...] = ()
    text = ""
    binary = _binary(data)
    if binary:
        # Past a byte that is not text, line numbers and the parser's view (it stops at NUL) mean nothing.
        found.append(binary)
    else:
        text = data.decode()
        instructions, lines, escape = _parse(text, found)
        stages = _check(instructions, context, build_args or {}, found)
        _check_trailing_continuation(instructions, lines, escape, found)
    found.sort(key=lambda problem: problem[0])
    return [f"{path}:{line}: {message}" for line, message in found], Systemfile(path, text, instructions, stages)


def _binary(data: bytes) -> tuple[int, str] | None:
    offsets: list[tuple[int, str]] = []
    if (nul := data.find(b"\0")) >= 0:
        offsets.append((nul, "NUL byte: this is not a text file"))
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        offsets.append((exc.start, f"byte 0x{data[exc.start]:02x} is not UTF-8: this is not a text file"))
    if not offsets:
        return None
    offset, message = min(offsets)
    return data.count(b"\n", 0, offset) + 1, message


def _parse(text: str, found: list[tuple[int, str]]) -> tuple[tuple[Instruction, ...], list[str], str]:
    """Parse, and for every parser error record it, blank the instruction it came from and parse again."""
    lines = text.split("\n")  # the Go parser counts only \n (it drops a \r before it), unlike str.splitlines
    escape = next((value for _, key, value in _directives(lines) if key == "escape" and value in ("\\", "`")), "\\")
    commands: list[Any] = []
    for _ in range(len(lines)):  # each round blanks at least one non-blank line
        try:
            commands = dockerfile.parse_string("\n".join(lines))
            break
        except dockerfile.GoParseError as exc:
            message = str(exc)
            if message == "file with no instructions":
                break
            first, last = _locate(lines, message, escape)
            found.append((first, _describe(message, lines[first - 1])))
            if not any(line.strip() for line in lines[first - 1 : last]):
                last = len(lines)  # never loop on a location that is already blank: give up on the rest
            lines[first - 1 : last] = [""] * (last - first + 1)
    return tuple(_instruction(command) for command in commands), lines, escape


def _instruction(command: Any) -> Instruction:
    cmd, value = str(command.cmd).upper(), tuple(str(v) for v in command.value)
    if cmd == "ONBUILD" and command.sub_cmd:
        value = (str(command.sub_cmd).upper(), *value)
    flags = tuple(str(f) for f in command.flags)
    return Instruction(cmd, value, bool(command.json), flags, command.start_line, command.end_line, command.original)


def _directives(lines: list[str]) -> list[tuple[int, str, str]]:
    """(line, lower-case key, value) of each parser directive: the top comment lines up to any other, even blank."""
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, 1):
        if not (match := _DIRECTIVE.match(line)):
            break
        found.append((number, match[1].lower(), match[2]))
    return found


def _raises(lines: list[str], message: str) -> bool:
    try:
        dockerfile.parse_string("\n".join(lines))
    except dockerfile.GoParseError as exc:
        return str(exc) == message
    return False


def _is_complete(line: str, escape: str) -> bool:
    """Whether a line can end an instruction: not blank, not a comment, not continued on the next line."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#") and not stripped.endswith(escape)


def _locate(lines: list[str], message: str, escape: str) -> tuple[int, int]:
    """The first and last line of the instruction (or directive) that made the parser fail with `message`."""
    if message.startswith(("invalid escape token", "only one ")):
        key = "escape" if message.startswith("invalid") else message.split()[2]
        numbers = [number for number, name, _ in _directives(lines) if name == key]
        # An invalid escape is the first escape directive; "only one" is about the second of its kind.
        line = numbers[min(0 if message.startswith("invalid") else 1, len(numbers) - 1)] if numbers else 1
        return line, line
    complete = [i for i, line in enumerate(lines, 1) if _is_complete(line, escape)]
    if message == "unterminated heredoc":
        # Every prefix from the opening line on fails like this, the one just before it does not. The opening
        # line holds `<<`, so try those from the last: a `<<` in the unterminated body fails too.
        openers = [number for number, line in enumerate(lines, 1) if "<<" in line]
        end = next((number - 1 for number in reversed(openers) if not _raises(lines[: number - 1], message)), 0)
        before = max((i for i in complete if i <= end), default=0)
        first = _first_instruction_line(lines, before)
        last = next((i for i in range(first + 1, len(lines) + 1) if _INSTRUCTION_LINE.match(lines[i - 1])), 0)
        return first, (last - 1 if last else len(lines))
    # A prefix ending on a complete line fails exactly when it holds the whole bad instruction (the parser stops at
    # the first error), so bisect for the shortest such prefix: its last line ends the bad instruction.
    if not complete or not _raises(lines[: complete[-1]], message):
        last = len(lines)  # the bad instruction runs to the end of the file
    else:
        low, high = -1, len(complete) - 1
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if _raises(lines[: complete[middle]], message) else (middle, high)
        last = complete[high]
    before = max((i for i in complete if i < last), default=0)
    return _first_instruction_line(lines, before), last


def _first_instruction_line(lines: list[str], after: int) -> int:
    numbers = range(after + 1, len(lines) + 1)
    return next((number for number in numbers if lines[number - 1].strip()[:1] not in ("", "#")), max(after, 1))


def _describe(message: str, line: str) -> str:
    words = line.split()
    keyword = words[0].upper() if words and not line.lstrip().startswith("#") else ""
    if message == "unterminated heredoc":
        names = [m[2] for m in _HEREDOC.finditer(line)] or ["EOF"]
        return f"unterminated heredoc: {keyword} opens <<{names[-1]} but no line '{names[-1]}' closes it"
    return f"{keyword}: {message}" if keyword and not message.startswith(keyword) else message


def _check(
    instructions: tuple[Instruction, ...], context: Path, build_args: Mapping[str, str], found: list[tuple[int, str]]
) -> tuple[Stage, ...]:
    """Checks on parsed instructions; returns the stages."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    # ARGs every build knows without declaring them; builds here are native, so they describe this machine.
    scope: dict[str, str | None] = {"TARGETOS": "linux", "TARGETARCH": arch, "TARGETPLATFORM": f"linux/{arch}"}
    scope |= {"BUILDOS": "linux", "BUILDARCH": arch, "BUILDPLATFORM": f"linux/{arch}"}
    scope |= {"TARGETVARIANT": "", "BUILDVARIANT": ""}
    stages: list[Stage] = []
    seen_from = False
    for ins in instructions:
        if ins.cmd not in INSTRUCTIONS:
            found.append((ins.start_line, f"unknown instruction {ins.cmd}{_did_you_mean(ins.cmd)}"))
            continue
        if not seen_from and ins.cmd not in ("ARG", "FROM"):
            found.append((ins.start_line, f"{ins.cmd} before the first FROM: only ARG may come before FROM"))
        if ins.cmd == "FROM":
            seen_from = True
            if stage := _stage(ins, scope, stages, found):
                stages.append(stage)
            continue
        _check_arguments(ins, found)
        if ins.cmd == "ARG" and not seen_from:
            for name, equals, default in (token.partition("=") for token in ins.value):
                if name in build_args:
                    scope[name] = build_args[name]
                else:
                    scope[name] = _expand(default.strip("\"'"), scope)[0] if equals else None
        if ins.cmd in ("COPY", "ADD"):
            _check_sources(ins, context, found)
    if not seen_from:
        found.append((1, "no FROM instruction: a Systemfile starts FROM an image (e.g. FROM localhost/arkes:base)"))
    _check_unused_stages(instructions, stages, found)
    return tuple(stages)


def _did_you_mean(word: str) -> str:
    close = difflib.get_close_matches(word.upper(), sorted(INSTRUCTIONS), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_arguments(ins: Instruction, found: list[tuple[int, str]]) -> None:
    value, line = ins.value, ins.start_line
    minimum, what = _NEEDS[ins.cmd]
    if len(value) < minimum and not (ins.json and ins.cmd in ("CMD", "ENTRYPOINT")):  # CMD [] clears CMD
        found.append((line, f"{ins.cmd} needs {what}"))
        return
    if (ins.cmd in ("ENV", "LABEL") and "" in value[::2]) or (ins.cmd == "ARG" and any(v[:1] == "=" for v in value)):
        found.append((line, f"{ins.cmd} has an empty name"))
    if ins.cmd in _JSON_FORMS and not ins.json and value and _meant_json(ins.cmd, value[0]):
        try:
            json.loads(" ".join(value))
            reason = "only strings are allowed"
        except json.JSONDecodeError as exc:
            reason = exc.msg.lower()
        found.append((line, f'{ins.cmd}: malformed JSON array ({reason}); write it as ["a", "b"] in double quotes'))
    elif ins.cmd == "SHELL" and not ins.json:
        found.append((line, f"SHELL needs {what}"))
    if ins.cmd == "HEALTHCHECK":
        mode = value[0].upper()
        if mode not in ("NONE", "CMD") or (mode == "CMD") != (len(value) > 1):
            found.append((line, f"HEALTHCHECK needs {what}"))
    if ins.cmd == "ONBUILD":
        if value[0] not in INSTRUCTIONS:
            found.append((line, f"ONBUILD: unknown instruction {value[0]}{_did_you_mean(value[0])}"))
        elif value[0] in ("ONBUILD", "FROM", "MAINTAINER"):
            found.append((line, f"ONBUILD: {value[0]} is not allowed as an ONBUILD trigger"))


def _meant_json(cmd: str, first: str) -> bool:
    if cmd not in ("RUN", "CMD", "ENTRYPOINT"):
        return first.startswith("[")  # no path or SHELL program starts with "["
    # In shell form `[` is the test command and is followed by a space; JSON is not, or holds quoted, comma-separated
    # items up to a closing bracket.
    return re.match(r"\[\S", first) is not None or (
        first.startswith("[") and first.rstrip().endswith("]") and re.search(r"[\"']\s*,", first) is not None
    )


def _expand(word: str, scope: Mapping[str, str | None]) -> tuple[str, list[str]]:
    """Substitute $X, ${X} and ${X:-default} as buildkit does; also return the names that had no value."""
    unset: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        value, op, alternative = scope.get(name), match["op"] or "", match["word"] or ""
        is_set = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("-"):
            return value if is_set and value is not None else alternative
        if op.endswith("+"):
            return alternative if is_set else ""
        if value is None:
            unset.append(name)
        return value or ""

    return _VARIABLE.sub(substitute, word), unset


def _stage(
    ins: Instruction, scope: Mapping[str, str | None], stages: list[Stage], found: list[tuple[int, str]]
) -> Stage | None:
    words, line = ins.value, ins.start_line
    if not words or words[0].upper() == "AS":
        found.append((line, "FROM needs an image"))
        return None
    if len(words) == 2 and words[1].upper() == "AS":
        found.append((line, "FROM ... AS needs a stage name"))
        return None
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
        found.append((line, f"FROM takes an image and an optional AS name, not {' '.join(words)!r}"))
        return None
    base, unset = _expand(words[0], scope)
    for name in unset:
        if name in scope:
            found.append((line, f"FROM uses ${name}, but ARG {name} has no default and no build argument sets it"))
        else:
            found.append((line, f"FROM uses ${name}, but no ARG {name} is declared before the first FROM"))
    if not base and not unset:
        found.append((line, f"FROM image {words[0]!r} is empty once ARGs are substituted"))
    stage_name = words[2].lower() if len(words) == 3 else None
    earlier = {s.name: s for s in stages if s.name}
    if stage_name and not _STAGE_NAME.match(stage_name):
        found.append((line, f"invalid stage name {stage_name!r}: use lower-case letters, digits, '-', '_' and '.'"))
    elif stage_name in earlier:
        found.append((line, f"duplicate stage name {stage_name!r} (first at line {earlier[stage_name].line})"))
    return Stage(base, stage_name, line, external=base != "scratch" and base.lower() not in earlier)


def _check_unused_stages(
    instructions: tuple[Instruction, ...], stages: list[Stage], found: list[tuple[int, str]]
) -> None:
    """Every stage but the last should feed a later one; an unnamed stage nothing uses is a forgotten FROM."""
    index = {stage.name: i for i, stage in enumerate(stages) if stage.name}
    used = {index[s.base.lower()] for s in stages if not s.external and s.base != "scratch"}
    for ins in instructions:
        current = sum(1 for stage in stages if stage.line <= ins.start_line) - 1
        sources = [f.partition("=")[2] for f in ins.flags if f.startswith("--from=")]
        for mount in (f.removeprefix("--mount=") for f in ins.flags if f.startswith("--mount=")):
            sources += [option[5:] for option in mount.split(",") if option.startswith("from=")]
        for source in sources:
            referenced = int(source) if source.isdigit() else index.get(source.lower(), current)
            if referenced < current:
                used.add(referenced)
    for i, (stage, following) in enumerate(itertools.pairwise(stages)):
        if i not in used and stage.name is None:
            why = f"the stage from line {stage.line} has no AS name and nothing uses it, so its work is thrown away"
            found.append((following.line, f"extra FROM: {why} (name it with AS and COPY --from it, or delete it)"))


def _check_sources(ins: Instruction, context: Path, found: list[tuple[int, str]]) -> None:
    if len(ins.value) < 2 or any(flag.startswith("--from=") for flag in ins.flags):
        return
    if not ins.json and ins.value[0].startswith("["):
        return  # malformed JSON, already reported; its words are not paths
    for source in ins.value[:-1]:
        # Heredocs, URLs and sources built from variables cannot be checked against the context here.
        if source.startswith("<<") or "$" in source or (ins.cmd == "ADD" and re.match(r"^(\w+://|git@)", source)):
            continue
        relative = posixpath.normpath(source)
        if relative == ".." or relative.startswith("../"):
            found.append((ins.start_line, f"{ins.cmd} source {source} is outside the build context {context}"))
        elif glob.has_magic(relative):
            if not glob.glob(relative.lstrip("/"), root_dir=context, include_hidden=True):
                found.append((ins.start_line, f"{ins.cmd} source {source} matches nothing in the build context"))
        elif not (context / relative.lstrip("/")).is_symlink() and not (context / relative.lstrip("/")).exists():
            found.append((ins.start_line, f"{ins.cmd} source {source} does not exist in the build context {context}"))


def _check_trailing_continuation(
    instructions: tuple[Instruction, ...], lines: list[str], escape: str, found: list[tuple[int, str]]
) -> None:
    """The parser silently accepts a `\\` on the last line; the instruction it belongs to was surely meant to go on."""
    last = next((i for i in range(len(lines), 0, -1) if lines[i - 1].strip()[:1] not in ("", "#")), 0)
    if not last or not instructions or not lines[last - 1].rstrip().endswith(escape):
        return
    final = instructions[-1]
    if final.start_line <= last <= final.end_line and "\n" not in final.original:  # heredocs end on their marker
        found.append((final.start_line, f"{final.cmd}: line continuation '{escape}' on the last line of the file"))
