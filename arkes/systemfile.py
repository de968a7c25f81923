"""Parse and validate a Systemfile (a Containerfile), reporting every problem as `PATH:LINE: message`.

The grammar is `arkes.containerfile`, our own port of BuildKit's current parser. This module checks what the
parsed instructions mean, as BuildKit's instructions package and its Dockerfile-to-LLB conversion do: the flags
each instruction takes and their values, RUN --mount options, HEALTHCHECK timings, variable substitution, stage
references, and COPY sources against the build context. BuildKit is the reference for what is valid. The builder
that runs our builds is Buildah 1.39, which lacks some of BuildKit's features and reads a few constructs
differently; those are refused too, with a message naming the builder, so that what `os check` accepts builds.

Errors make `os check` fail; warnings (what BuildKit warns about or skips) are reported and do not.
"""

from __future__ import annotations

import csv
import difflib
import glob
import itertools
import platform
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from arkes.containerfile import BUILDER, Lexer, Parsed, ShellError, json_array, parse_heredoc
from arkes.containerfile import INSTRUCTIONS as INSTRUCTIONS  # re-exported with the model, as part of this API
from arkes.containerfile import Heredoc as Heredoc
from arkes.containerfile import Instruction as Instruction
from arkes.containerfile import parse as parse_text
from arkes.errors import UsageError, ValidationError

# (minimum number of parsed arguments, what is missing) per instruction; FROM is checked on its own.
_NEEDS: dict[str, tuple[int, str]] = dict.fromkeys(("RUN", "CMD", "ENTRYPOINT"), (1, "a command"))
_NEEDS |= dict.fromkeys(("COPY", "ADD"), (2, "a source and a destination"))
_NEEDS |= {"ENV": (2, "NAME=value"), "LABEL": (2, "key=value"), "WORKDIR": (1, "a directory")}
_NEEDS |= {"USER": (1, "a user name or UID"), "ARG": (1, "a name (ARG NAME or ARG NAME=default)")}
_NEEDS |= {"EXPOSE": (1, "a port"), "VOLUME": (1, "a path"), "STOPSIGNAL": (1, "a signal"), "MAINTAINER": (1, "a name")}
_NEEDS |= {
    "SHELL": (1, 'a JSON array such as ["/bin/sh", "-c"]'),
    "HEALTHCHECK": (1, "NONE, or CMD followed by a command"),
}
_NEEDS |= {"ONBUILD": (1, "an instruction to run in images built FROM this one")}
_JSON_FORMS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
# The flags BuildKit's instructions/parse.go defines per instruction: "b"ool, "s"tring, or "m"any strings. Any
# other instruction takes none, except ARG, STOPSIGNAL and HEALTHCHECK NONE, whose flags BuildKit never parses.
_FLAGS: dict[str, dict[str, str]] = {
    "ADD": {"chown": "s", "chmod": "s", "link": "b", "keep-git-dir": "b", "checksum": "s", "unpack": "b"}
    | {"exclude": "m"},
    "COPY": {"chown": "s", "from": "s", "chmod": "s", "link": "b", "exclude": "m", "parents": "b"},
    "FROM": {"platform": "s"},
    "RUN": {"mount": "m", "network": "s", "security": "s", "device": "m"},
    "HEALTHCHECK": dict.fromkeys(("interval", "timeout", "start-period", "start-interval", "retries"), "s"),
}
_UNPARSED_FLAGS = frozenset({"ARG", "STOPSIGNAL"})
# Flags BuildKit accepts that Buildah 1.39 refuses: always, or when true.
_UNSUPPORTED = {("RUN", "device"), ("ADD", "unpack")}
# COPY --link, ADD --link, COPY --parents and RUN --security=sandbox the builder lacks, but arkes.builderfile
# rewrites them into what it has, with the same result; these it cannot build.
_UNSUPPORTED_TRUE = {("ADD", "keep-git-dir")}
_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_TARGET = ("target", "dst", "destination")
_READ = ("readonly", "ro", "readwrite", "rw")
_MOUNT_KEYS: tuple[str, ...] = ("type", "from", "source", "src", "id", "sharing", "required", "size", "mode", "uid")
_MOUNT_KEYS = (*_MOUNT_KEYS, "gid", "env", *_TARGET, *_READ)
# The mount keys Buildah 1.39 reads, per type (its own parser, which knows a few keys BuildKit refuses).
_BUILDER_MOUNT_KEYS = {
    "bind": {"type", "from", "source", "src", *_TARGET, *_READ},
    "cache": {"type", "id", "sharing", "from", "source", "src", "mode", "uid", "gid", *_TARGET, *_READ},
    "tmpfs": {"type", "readonly", "ro", *_TARGET},
    "secret": {"type", "id", "required", "mode", "uid", "gid", *_TARGET},
    "ssh": {"type", "id", "required", "mode", "uid", "gid", *_TARGET},
}
_BOOL = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}  # Go's strconv.ParseBool
_DURATION_UNITS = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_SYMBOLIC_MODE = re.compile(r"[ugoa]*(?:[-+=][rwxXstugo]*)+(?:,[ugoa]*(?:[-+=][rwxXstugo]*)+)*")
_SIGNALS = {"ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE"}
_SIGNALS |= {"POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN"}
_SIGNALS |= {"TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX"}
_SIGNALS |= {f"RTMIN+{n}" for n in range(1, 16)} | {f"RTMAX-{n}" for n in range(1, 15)}
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)", re.IGNORECASE)
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Env = dict[str, str | None]
# The environment an image sets (its config's Env), or None when it is not at hand: then a variable the Systemfile
# does not set may come from the image, and its substitutions are left for the builder.
ImageEnv = Callable[[str], Mapping[str, str] | None]


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
    # Warnings the build repeats, because they concern the machine, not the syntax: writes under /var.
    state_warnings: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class Report:
    """What `os check` says: errors (the build would fail or go wrong) and warnings, each `PATH:LINE: message`."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    systemfile: Systemfile


def check(
    path: Path,
    context: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    *,
    image_env: ImageEnv | None = None,
) -> Report:
    """Every error and warning, each sorted by line. context defaults to path.parent; `image_env` tells what
    each base image sets, so that ${VAR:?message} of a variable neither the file nor its base sets is refused.

    A missing or unreadable file (or context) is not a problem in the file: it raises UsageError.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {exc.strerror or exc}", hint="give the path of a Systemfile (a Containerfile)"
        ) from exc
    context = path.parent if context is None else context
    if not context.is_dir():
        raise UsageError(f"build context {context} is not a directory", hint="give the directory COPY reads from")
    checker = _Checker(context, build_args or {}, image_env)
    text = ""
    if binary := _binary(data):
        # Past a byte that is not text, line numbers and the parser's view mean nothing.
        checker.errors.append(binary)
    else:
        text = data.decode()
        checker.run(parse_text(text))

    def render(found: list[tuple[int, str]]) -> tuple[str, ...]:
        return tuple(f"{path}:{line}: {message}" for line, message in sorted(found, key=lambda item: item[0]))

    systemfile = Systemfile(path, text, checker.instructions, tuple(checker.stages), render(checker.state_warnings))
    return Report(render(checker.errors), render(checker.warnings), systemfile)


def problems(path: Path, context: Path | None = None, build_args: Mapping[str, str] | None = None) -> list[str]:
    """Every error as 'PATH:LINE: message', sorted by line; empty when valid. context defaults to path.parent."""
    return list(check(path, context, build_args).errors)


def warnings(path: Path, context: Path | None = None, build_args: Mapping[str, str] | None = None) -> list[str]:
    """Every warning as 'PATH:LINE: message', sorted by line: what BuildKit warns about but builds."""
    return list(check(path, context, build_args).warnings)


def load(
    path: Path,
    context: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    *,
    image_env: ImageEnv | None = None,
) -> Systemfile:
    """Parse and validate; raise ValidationError listing every error, UsageError if the file cannot be read."""
    report = check(path, context, build_args, image_env=image_env)
    if report.errors:
        raise ValidationError(list(report.errors), hint=f"fix {path} and run `os check` again")
    return report.systemfile


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


def _is_machine_state(destination: str) -> bool:
    """Whether a destination is under /var, except its caches and scratch space, which no upgrade keeps."""
    path = "/" + destination.strip().lstrip("/")
    parts = [p for p in path.split("/") if p and p != "."]
    return bool(parts) and parts[0] == "var" and (len(parts) < 2 or parts[1] not in ("tmp", "cache", "log"))


def _did_you_mean(word: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _uint(text: str, base: int) -> int | None:
    """Go's strconv.ParseUint(text, base, 32): digits only, no sign, below 2**32."""
    digits = "01234567" if base == 8 else "0123456789"
    if not text or any(char not in digits for char in text) or int(text, base) >= 2**32:
        return None
    return int(text, base)


def _duration(text: str) -> float | None:
    """Go's time.ParseDuration in nanoseconds, or None: `0`, or signed numbers each with a unit (1m30s, 1.5h)."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not re.fullmatch(f"(?:{_DURATION.pattern})+", body):
        return None
    total = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION.findall(body))
    return -total if text[:1] == "-" else total


@dataclass
class _StageState:
    """One stage while checking: its variables (None: declared without a value) and what it references."""

    index: int
    name: str | None  # as written after AS
    line: int
    env: Env
    complete: bool  # whether env is everything (scratch), or the base image may set more
    references: list[tuple[int, int, str]] = field(default_factory=list)  # (stage index, line, description)


class _Checker:
    def __init__(self, context: Path, build_args: Mapping[str, str], image_env: ImageEnv | None = None) -> None:
        self.context, self.build_args, self.image_env = context, build_args, image_env
        self.errors: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []
        self.state_warnings: list[tuple[int, str]] = []
        self.instructions: tuple[Instruction, ...] = ()
        self.stages: list[Stage] = []
        self.states: list[_StageState] = []
        self.escape = "\\"
        arch = _ARCH.get(platform.machine(), platform.machine())
        # ARGs every build knows without declaring them; builds here are native, so they describe this machine.
        values = {"OS": "linux", "ARCH": arch, "PLATFORM": f"linux/{arch}", "VARIANT": ""}
        self.predefined = {kind + key: value for kind in ("TARGET", "BUILD") for key, value in values.items()}
        self.meta: Env = dict(self.predefined)
        self.meta_declared: set[str] = set()
        self.table: list[tuple[str | None, int]] = []

    def error(self, line: int, message: str) -> None:
        self.errors.append((line, message))

    def builder(self, line: int, message: str) -> None:
        self.errors.append((line, f"{message}: {BUILDER} does not support it"))

    def run(self, parsed: Parsed) -> None:
        self.errors += parsed.errors
        self.warnings += parsed.warnings
        self.errors += parsed.divergences
        self.escape, self.instructions = parsed.escape, parsed.instructions
        # Every stage of the file, the later ones included, for references to them: (name as written, line).
        self.table = [
            (ins.value[2] if len(ins.value) == 3 else None, ins.start_line)
            for ins in parsed.instructions
            if ins.cmd == "FROM" and ins.value[:1] and ins.value[0].upper() != "AS"
            if len(ins.value) == 1 or (len(ins.value) == 3 and ins.value[1].upper() == "AS")
        ]
        for directive in parsed.directives:
            if directive.name == "check":
                self._check_directive(directive.value.split(" ")[0], directive.line)
        for ins in parsed.instructions:
            self._instruction(ins)
        if not self.states:
            self.error(1, "no FROM instruction: a Systemfile starts FROM an image (e.g. FROM localhost/arkes:base)")
        self._check_stage_graph()
        self._check_trailing_continuation(parsed)

    def _check_directive(self, value: str, line: int) -> None:
        """BuildKit refuses the build when `# check=` does not parse (it reads the value up to the first space)."""
        for part in value.strip().split(";", 2) if value.strip() else []:
            key, equals, setting = part.partition("=")
            if not equals or key.strip() not in ("skip", "experimental", "error"):
                self.error(line, f"invalid check option {(key if equals else part).strip()!r} in # check=")
            elif key.strip() == "error" and setting.strip() not in _BOOL:
                self.error(line, f"# check=error= takes true or false, not {setting.strip()!r}")

    def _instruction(self, ins: Instruction) -> None:
        cmd, line = ins.cmd, ins.start_line
        if cmd not in INSTRUCTIONS:
            self.error(line, f"unknown instruction {cmd}{_did_you_mean(cmd, sorted(INSTRUCTIONS))}")
            return
        if not self.states and cmd not in ("ARG", "FROM"):
            self.error(line, f"{cmd} before the first FROM: only ARG may come before FROM")
        flags = self._flags(ins)
        if cmd == "FROM":
            self._stage(ins, flags)
            return
        if not self._arguments(ins):
            return
        state = self.states[-1] if self.states else None
        lexer = self._lexer(state)
        if cmd in ("COPY", "ADD"):
            self._copy(ins, flags, state, lexer)
        elif cmd == "RUN":
            self._run(ins, flags, state, lexer)
        elif cmd == "HEALTHCHECK":
            self._healthcheck(ins, flags)
        elif cmd in ("ENV", "LABEL"):
            values = [self._expand(ins, lexer, word) for word in ins.value]
            if cmd == "ENV" and state is not None:
                # A value that depends on the image is still set: keep it as written rather than call it unset.
                settings = [value if value is not None else raw for value, raw in zip(values, ins.value, strict=True)]
                state.env |= dict(zip(settings[::2], settings[1::2], strict=True))
        elif cmd == "ARG":
            self._arg(ins, state, lexer)
        elif cmd in ("WORKDIR", "USER", "VOLUME", "STOPSIGNAL", "EXPOSE"):
            self._simple(ins, lexer)
        elif cmd == "MAINTAINER":
            self.warnings.append((line, "MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=..."))
        elif cmd == "SHELL" and ins.json:
            why = "it writes OCI images, which have no SHELL, and RUN keeps using /bin/sh -c; call the shell in RUN"
            self.error(line, f"SHELL: {BUILDER} drops it ({why})")
        if cmd in ("HEALTHCHECK", "ONBUILD"):
            self.warnings.append((line, f"{cmd} has no effect: {BUILDER} writes OCI images, which cannot hold it"))

    def _lexer(self, state: _StageState | None) -> Lexer:
        return (
            Lexer(self.escape, self.meta) if state is None else Lexer(self.escape, state.env, complete=state.complete)
        )

    def _expand(self, ins: Instruction, lexer: Lexer, word: str, *, words: bool = False) -> str | None:
        """A word with its variables substituted, as the build will; None when that fails or depends on the image.

        Buildah substitutes with imagebuilder's own code, which lacks ${NAME-x} and friends (heredoc bodies, which
        it substitutes with BuildKit's code, pass `skip_quotes` lexers and are spared that check).
        """
        lexer.uncertain = False
        lexer.plain_modifiers.clear()
        try:
            result = " ".join(lexer.words(word)) if words else lexer.word(word)
        except ShellError as exc:
            self.error(ins.start_line, f"{ins.cmd}: {exc}")
            return None
        for modifier in sorted(lexer.plain_modifiers if not lexer.skip_quotes else ()):
            self.builder(ins.start_line, f"{ins.cmd}: {modifier} without ':' (write ${{NAME:-...}})")
        return None if lexer.uncertain else result

    # --- flags ---------------------------------------------------------------------------------------------

    def _flags(self, ins: Instruction) -> dict[str, list[str]]:
        """The flags as BuildKit's BFlags parses them, {name: values}; every bad one is reported."""
        cmd, line = ins.cmd, ins.start_line
        if cmd in _UNPARSED_FLAGS or (cmd == "HEALTHCHECK" and ins.value[:1] and ins.value[0].upper() == "NONE"):
            if ins.flags:
                self.warnings.append((line, f"{cmd} ignores flags: {' '.join(ins.flags)} has no effect"))
            return {}
        known, found = _FLAGS.get(cmd, {}), dict[str, list[str]]()
        for flag in ins.flags:
            if flag == "--":
                break
            name, equals, value = flag[2:].partition("=")
            kind = known.get(name)
            if kind is None:
                if known:
                    self.error(line, f"{cmd}: unknown flag --{name}{_did_you_mean(name, sorted(known), '--')}")
                else:
                    self.error(line, f"{cmd} takes no flags, not {flag}")
                continue
            if name in found and kind != "m":
                self.error(line, f"{cmd}: duplicate flag --{name}")
                continue
            if kind == "b":
                if equals and value.lower() not in ("true", "false"):
                    why = "missing a value" if not value else f"expecting true or false, not {value!r}"
                    self.error(line, f"{cmd} --{name}: {why}")
                    continue
                value = value.lower() or "true"
                if equals and flag[len(name) + 3 :] not in ("true", "false"):
                    self.builder(line, f"{cmd} {flag}: a value in upper case")
            elif not equals:
                self.error(line, f"{cmd}: flag --{name} is missing a value (write --{name}=VALUE)")
                continue
            elif not value and name in ("chown", "from", "exclude", "checksum", "mount"):
                self.builder(line, f"{cmd} --{name}= with an empty value")
            if (cmd, name) in _UNSUPPORTED or ((cmd, name) in _UNSUPPORTED_TRUE and value == "true"):
                self.builder(line, f"{cmd} --{name}")
            elif (cmd, name) == ("RUN", "security") and value == "insecure":
                self.builder(line, "RUN --security=insecure")
            found.setdefault(name, []).append(value)
        return found

    # --- instructions --------------------------------------------------------------------------------------

    def _arguments(self, ins: Instruction) -> bool:
        """Argument counts and forms; False when the instruction is too broken to check further."""
        value, line, cmd = ins.value, ins.start_line, ins.cmd
        minimum, what = _NEEDS[cmd]
        if len(value) < minimum and not (ins.json and cmd in ("CMD", "ENTRYPOINT")):  # CMD [] clears CMD
            self.error(line, f"{cmd} needs {what}")
            return False
        if (cmd in ("ENV", "LABEL") and "" in value[::2]) or (cmd == "ARG" and any(v[:1] == "=" for v in value)):
            self.error(line, f"{cmd} has an empty name")
        if cmd in _JSON_FORMS and not ins.json and value and _meant_json(cmd, " ".join(value)):
            reason = json_array(" ".join(value))[1] or "only strings are allowed"
            if reason != "extra data":  # text after a whole array: reported as a difference from the builder
                self.error(line, f'{cmd}: malformed JSON array ({reason}); write it as ["a", "b"] in double quotes')
            return cmd not in ("COPY", "ADD", "VOLUME")
        if cmd == "SHELL" and not ins.json:
            self.error(line, f"SHELL needs {what}")
        if cmd == "HEALTHCHECK":
            mode = value[0].upper()
            if mode not in ("NONE", "CMD") or (mode == "CMD") != (len(value) > 1):
                self.error(line, f"HEALTHCHECK needs {what}")
        if cmd == "ONBUILD" and ins.trigger is not None:
            trigger = ins.trigger.cmd
            if trigger not in INSTRUCTIONS:
                self.error(
                    line, f"ONBUILD: unknown instruction {trigger}{_did_you_mean(trigger, sorted(INSTRUCTIONS))}"
                )
            elif trigger in ("ONBUILD", "FROM", "MAINTAINER"):
                self.error(line, f"ONBUILD: {trigger} is not allowed as an ONBUILD trigger")
            else:  # BuildKit checks a trigger only when an image is built FROM this one; it would fail there
                count = len(self.errors)
                self._flags(ins.trigger)
                self._arguments(ins.trigger)
                self.errors[count:] = [(n, f"ONBUILD {message}") for n, message in self.errors[count:]]
        return True

    def _simple(self, ins: Instruction, lexer: Lexer) -> None:
        """WORKDIR, USER, VOLUME, STOPSIGNAL and EXPOSE: substitute, then check what BuildKit checks."""
        cmd, line = ins.cmd, ins.start_line
        for word in ins.value:
            value = self._expand(ins, lexer, word, words=cmd == "EXPOSE")
            if value is None:
                continue
            if cmd == "VOLUME" and not value.strip():
                self.error(line, "VOLUME specified can not be an empty string")
            elif cmd == "STOPSIGNAL" and not _is_signal(value):
                self.error(line, f"STOPSIGNAL: invalid signal {value!r} (use a name such as SIGTERM, or a number)")
            elif cmd == "EXPOSE":
                for port in value.split():
                    if why := _port_problem(port):
                        self.error(line, f"EXPOSE: invalid port {port!r}: {why}")

    def _arg(self, ins: Instruction, state: _StageState | None, lexer: Lexer) -> None:
        for token in ins.value:
            name, equals, default = token.partition("=")
            if equals and name in ("TARGETPLATFORM", "BUILDPLATFORM"):
                self.builder(ins.start_line, f"ARG: a default for {name}, which the builder sets itself")
            value: str | None = None
            if name in self.build_args:  # BuildKit then leaves the default alone, even an erroneous one
                value = str(self.build_args[name])
            elif equals:
                value = self._expand(ins, lexer, default)
                value = default if value is None else value
            elif state is not None:
                value = self.meta.get(name) if name in self.meta_declared else self.predefined.get(name)
            if state is None:
                self.meta_declared.add(name)
                if value is not None or name not in self.meta:
                    self.meta[name] = value
            elif value is not None or name not in state.env:
                # An ARG without a value leaves its name unset: we take it that the image does not set it either.
                state.env[name] = value

    def _stage(self, ins: Instruction, flags: dict[str, list[str]]) -> None:
        words, line = ins.value, ins.start_line
        if not words or words[0].upper() == "AS":
            self.error(line, "FROM needs an image")
            return
        if len(words) == 2 and words[1].upper() == "AS":
            self.error(line, "FROM ... AS needs a stage name")
            return
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
            self.error(line, f"FROM takes an image and an optional AS name, not {' '.join(words)!r}")
            return
        lexer = Lexer(self.escape, self.meta)
        base = self._expand(ins, lexer, words[0]) or ""
        for unset in dict.fromkeys(lexer.unset):
            if unset in self.meta:
                self.error(line, f"FROM uses ${unset}, but ARG {unset} has no default and no build argument sets it")
            else:
                self.error(line, f"FROM uses ${unset}, but no ARG {unset} is declared before the first FROM")
        if not base and not lexer.unset:
            self.error(line, f"FROM image {words[0]!r} is empty once ARGs are substituted")
        for value in flags.get("platform", []):
            self._expand(ins, Lexer(self.escape, self.meta), value)
        written = words[2] if len(words) == 3 else None
        name = written.lower() if written else None
        earlier = {s.name: s for s in self.stages if s.name}
        if name and not _STAGE_NAME.match(name):
            self.error(line, f"invalid stage name {name!r}: use lower-case letters, digits, '-', '_' and '.'")
        elif name in earlier:
            self.error(line, f"duplicate stage name {name!r} (first at line {earlier[name].line})")
        elif name in ("context", "scratch"):
            self.warnings.append((line, f"stage name {name!r} is reserved: BuildKit warns about it"))
        if written and written != name:
            why = "BuildKit lower-cases stage names, the builder matches them exactly"
            self.warnings.append((line, f"stage name {written!r} is not in lower case ({why}); write {name!r}"))
        # BuildKit finds a FROM stage by the exact (lower-cased) name, Buildah by the name as written.
        index = self._stage_index(base, line, f"FROM {base}", earlier_only=True) if base else None
        env: Env = {"PATH": _DEFAULT_PATH} if base == "scratch" else {}
        complete = base == "scratch"
        if index is not None:
            env, complete = dict(self.states[index].env), self.states[index].complete
        elif base != "scratch" and base and self.image_env and (known := self.image_env(base)) is not None:
            # BuildKit substitutes with the base image's own variables, and knows that the others are unset.
            env, complete = dict(known), True
        self.states.append(_StageState(len(self.states), written, line, env, complete))
        if index is not None:
            self.states[-1].references.append((index, line, f"FROM {base}"))
        later = next((at for named, at in self.table[len(self.states) :] if named and named.lower() == base), None)
        if index is None and later is not None:
            why = "a stage can only build on an earlier one; BuildKit and the builder look for an image of that name"
            self.error(line, f"FROM {base}: names the stage defined later, at line {later}: {why}")
        external = base != "scratch" and index is None
        self.stages.append(Stage(base, name, line, external))

    def _stage_index(self, reference: str, line: int, what: str, *, earlier_only: bool = False) -> int | None:
        """The index of the stage a reference names, or None for an image.

        BuildKit lower-cases stage names and looks up FROM's image as written, a --from in lower case; Buildah
        compares the names as written. Where the two disagree, the build would not do what BuildKit does.
        """
        table = self.table[: len(self.states)] if earlier_only else self.table
        wanted = reference if earlier_only else reference.lower()
        buildkit = next((i for i, (name, _) in enumerate(table) if name and name.lower() == wanted), None)
        buildah = next((i for i, (name, _) in enumerate(table) if name == reference), None)
        if buildkit != buildah:
            named = table[buildkit if buildkit is not None else buildah or 0][0]
            why = f"BuildKit and {BUILDER} disagree on whether that is the stage (one ignores case, one does not)"
            self.error(line, f"{what}: the stage is named {named!r}: {why}; write the name exactly as after AS")
        return buildkit

    def _reference(self, state: _StageState | None, source: str, line: int, what: str) -> None:
        """Record a COPY --from or RUN --mount from= that names a stage (by name, or by index when `what` is COPY)."""
        if state is None:
            return
        if what.startswith("RUN") and source.isdigit():
            why = "BuildKit finds a mount's stage by name only, so it would pull an image of that name"
            self.error(line, f"{what}: {why}; name the stage with AS and use the name")
            return
        if what.startswith("COPY") and re.fullmatch(r"[+-]?[0-9]+", source):
            index = int(source)
            if not 0 <= index < len(self.table):
                self.error(line, f"{what}: invalid stage index {index} (the file has {len(self.table)} stages)")
                return
        elif (found := self._stage_index(source, line, what)) is not None:
            index = found
        else:
            return  # an image
        state.references.append((index, line, what))

    def _copy(self, ins: Instruction, flags: dict[str, list[str]], state: _StageState | None, lexer: Lexer) -> None:
        cmd, line = ins.cmd, ins.start_line
        if parse_heredoc(ins.value[-1]) is not None:
            self.error(line, f"{cmd} cannot accept a heredoc as a destination")
        for source in flags.get("from", []):
            if source and "$" in source:
                why = "define a stage with FROM using an ARG from before the first FROM instead"
                self.error(line, f"COPY --from={source}: variable expansion is not supported for --from ({why})")
            elif source:
                self._reference(state, source, line, f"COPY --from={source}")
        for chmod in flags.get("chmod", []):
            if (mode := self._expand(ins, lexer, chmod)) is not None:
                self._chmod(cmd, mode, line)
        for value in flags.get("chown", []) + flags.get("checksum", []):
            self._expand(ins, lexer, value)
        paths = [source for source in ins.value[:-1] if parse_heredoc(source) is None]
        expanded = [self._expand(ins, lexer, word) for word in [*paths, ins.value[-1]]][:-1]
        for doc in ins.heredocs:
            if doc.expand:  # BuildKit substitutes variables in a COPY heredoc unless its delimiter is quoted
                self._expand(ins, Lexer("\\", lexer.env, complete=lexer.complete, skip_quotes=True), doc.text)
        if flags.get("checksum"):
            if len(paths) != 1:
                self.error(line, "ADD --checksum can't be specified for multiple sources")
            elif not re.match(r"^(https?://|git@|git://|ssh://)", paths[0]) and not paths[0].endswith(".git"):
                self.error(line, "ADD --checksum requires HTTP(S) or Git sources")
        if cmd == "COPY" and any(v == "true" for v in flags.get("parents", [])):
            # arkes.builderfile stages --parents sources from the build context before the build; these it cannot.
            if flags.get("from"):
                self.builder(line, "COPY --parents with --from")
            elif len(paths) != len(ins.value) - 1:
                self.builder(line, "COPY --parents of a heredoc")
            elif any("$" in source for source in paths):
                self.builder(line, "COPY --parents of sources built from variables")
        if cmd == "COPY":
            for source in paths:
                if _URL.match(source):
                    self.error(line, f"COPY source {source} is a URL or Git repository: COPY cannot fetch it, ADD can")
        destination = self._expand(ins, lexer, ins.value[-1])
        if destination is not None and _is_machine_state(destination):
            why = (
                f"{cmd} to {destination}: /var belongs to the machine; an image's /var content seeds a machine once "
                "and later changes there never arrive (put files in /usr and create state with tmpfiles.d or "
                "a unit's StateDirectory=)"
            )
            self.warnings.append((line, why))
            self.state_warnings.append((line, why))
        if not flags.get("from") and "<<" not in ins.value and not _meant_json(cmd, " ".join(ins.value)):
            # A source built from variables depends on the build arguments of the real build: it is not checked.
            self._check_sources(
                ins, [e for s, e in zip(paths, expanded, strict=True) if e is not None and "$" not in s]
            )

    def _chmod(self, cmd: str, mode: str, line: int) -> None:
        """BuildKit takes an octal mode up to 07777 or a symbolic one (u+x); Buildah only the octal one."""
        if _uint(mode, 8) is not None and int(mode, 8) <= 0o7777:
            return
        if mode[:1].isdigit() or not _SYMBOLIC_MODE.fullmatch(mode):
            self.error(line, f"{cmd} --chmod={mode}: not an octal mode between 0 and 07777 (nor a symbolic one)")
        else:
            self.builder(line, f"{cmd} --chmod={mode}: a symbolic mode (write it in octal, such as 0755)")

    def _check_sources(self, ins: Instruction, sources: list[str]) -> None:
        context, cmd, line = self.context, ins.cmd, ins.start_line
        for source in sources:
            if cmd == "ADD" and _URL.match(source):
                continue  # fetched at build time
            relative = posixpath.normpath(source)
            if relative == ".." or relative.startswith("../"):
                self.error(line, f"{cmd} source {source} is outside the build context {context}")
            elif glob.has_magic(relative):
                # `**` matches any number of directories, none included, as in BuildKit and Buildah.
                pattern = relative.lstrip("/").replace("[^", "[!")
                if not glob.glob(pattern, root_dir=context, include_hidden=True, recursive=True):
                    self.error(line, f"{cmd} source {source} matches nothing in the build context")
            elif not (context / relative.lstrip("/")).is_symlink() and not (context / relative.lstrip("/")).exists():
                self.error(line, f"{cmd} source {source} does not exist in the build context {context}")

    def _run(self, ins: Instruction, flags: dict[str, list[str]], state: _StageState | None, lexer: Lexer) -> None:
        line = ins.start_line
        for network in flags.get("network", []):
            value = self._expand(ins, lexer, network)
            if value is not None and value not in ("default", "none", "host"):
                self.error(line, f"RUN --network={network}: invalid network mode (use default, none or host)")
        for security in flags.get("security", []):
            if security not in ("insecure", "sandbox"):
                self.error(line, f"RUN --security={security}: not valid (use insecure or sandbox)")
        for mount in flags.get("mount", []):
            self._mount(ins, mount, state, lexer)
        if ins.heredocs and parse_heredoc(ins.value[0]) is not None and ins.heredocs[0].text.startswith("#!"):
            why = "under chroot isolation the builder cannot open the script; feed it to its program: RUN python3 <<EOF"
            self.builder(line, f"RUN <<{ins.heredocs[0].name}: a heredoc script that starts with #! ({why})")

    def _mount(self, ins: Instruction, raw: str, state: _StageState | None, lexer: Lexer) -> None:
        """One RUN --mount, as BuildKit's parseMount reads it, then what Buildah's own mount parser accepts."""
        line, where = ins.start_line, f"RUN --mount={raw}"
        if '"' in raw:
            self.builder(line, f"{where}: quotes inside a mount (the builder splits it at every comma)")
        try:
            fields = next(csv.reader([raw], strict=True), [])
        except csv.Error as exc:
            self.error(line, f"{where}: failed to parse csv mounts: {exc}")
            return
        kind, values, bare = "bind", dict[str, str](), set[str]()
        for item in fields:
            key, equals, value = item.partition("=")
            lower = key.lower()
            if key != lower:
                self.builder(line, f"{where}: the key {key!r} in upper case")
            if not equals:
                if lower == "required" and kind not in ("secret", "ssh"):
                    self.error(line, f"{where}: unexpected key 'required' for mount type '{kind}'")
                elif lower not in _READ and lower != "required":
                    self.error(line, f"{where}: invalid field '{item}' must be a key=value pair")
                bare.add(lower)
                continue
            if lower == "from" and "$" in value[:-1]:
                self.error(line, f"{where}: 'from' doesn't support variable expansion, define alias stage instead")
                continue
            expanded = self._expand(ins, lexer, value)
            if expanded is None:
                values[lower] = value
                continue
            problem = _mount_field_problem(kind, lower, expanded, item)
            if problem:
                self.error(line, f"{where}: {problem}")
            if lower == "type" and not problem:
                kind = expanded.lower()
                if expanded != kind:
                    self.builder(line, f"{where}: the type {expanded!r} in upper case")
            elif lower in _READ:
                self.builder(line, f"{where}: a value for {lower} (write {lower} alone)")
            values[lower] = expanded
        for problem in _mount_problems(kind, values):
            self.error(line, f"{where}: {problem}")
        for key in sorted(
            (set(values) | bare) - _BUILDER_MOUNT_KEYS[kind] - {k for k in values if k not in _MOUNT_KEYS}
        ):
            self.builder(line, f"{where}: the key {key!r} for a {kind} mount")
        if kind == "cache" and values.get("sharing", "").lower() == "private":
            self.builder(line, f"{where}: sharing=private (use shared or locked)")
        if kind in ("bind", "cache", "tmpfs") and not any(values.get(key) for key in _TARGET):
            self.builder(line, f"{where}: a {kind} mount without target=")
        if kind == "secret" and not values.get("id"):
            self.builder(line, f"{where}: a secret mount without id=")
        if kind == "bind" and bare & {"rw", "readwrite"}:
            why = "the builder lays an overlay on it, which fails inside the builder's container"
            self.builder(line, f"{where}: a read-write bind mount ({why})")
        if kind == "ssh" and "required" in bare:
            self.builder(line, f"{where}: required without a value in an ssh mount (write required=true)")
        if values.get("from") and "$" not in values["from"]:
            self._reference(state, values["from"], line, f"RUN --mount from={values['from']}")

    def _healthcheck(self, ins: Instruction, flags: dict[str, list[str]]) -> None:
        line = ins.start_line
        for name in ("interval", "timeout", "start-period", "start-interval"):
            for value in flags.get(name, []):
                duration = _duration(value) if value else 0.0
                if duration is None:
                    self.error(line, f"HEALTHCHECK --{name}={value}: not a duration (write e.g. 30s, 1m30s, 500ms)")
                elif duration == 0 and value:
                    self.builder(line, f"HEALTHCHECK --{name}={value}: a zero interval (leave the flag out instead)")
                elif 0 < abs(duration) < 1e6 or duration < 0:
                    self.error(line, f"HEALTHCHECK --{name}={value}: cannot be less than 1ms")
        for value in flags.get("retries", []):
            if not re.fullmatch(r"[+-]?[0-9]+", value) or not -(2**31) <= int(value) < 2**31:
                self.error(line, f"HEALTHCHECK --retries={value}: not a whole number")
            elif int(value) < 0:
                self.error(line, f"HEALTHCHECK --retries={value}: --retries cannot be negative")
            elif int(value) == 0:
                self.builder(line, "HEALTHCHECK --retries=0 (it must be at least 1)")

    # --- the whole file ------------------------------------------------------------------------------------

    def _check_stage_graph(self) -> None:
        """References to the own or a later stage are errors; an unnamed stage nothing uses is only a warning."""
        used: set[int] = set()
        for state in self.states:
            for index, line, what in state.references:
                if index < state.index:
                    used.add(index)
                elif index == state.index:
                    self.error(line, f"{what}: names its own stage (circular dependency)")
                else:
                    why = "a stage can only use stages defined before it"
                    if self._reaches(index, state.index):
                        why += " and that stage depends on this one (circular dependency)"
                    self.error(line, f"{what}: names a later stage; {why}")
        for stage, following in itertools.pairwise(self.states):
            if stage.index not in used and stage.name is None:
                why = f"the stage from line {stage.line} has no AS name and nothing uses it, so BuildKit skips it"
                hint = "name it with AS and COPY --from it, or delete it"
                self.warnings.append((following.line, f"extra FROM: {why} ({hint})"))

    def _reaches(self, start: int, goal: int) -> bool:
        seen, todo = set(), [start]
        while todo:
            index = todo.pop()
            if index == goal:
                return True
            if index in seen or index >= len(self.states):
                continue
            seen.add(index)
            todo += [target for target, _, _ in self.states[index].references]
        return False

    def _check_trailing_continuation(self, parsed: Parsed) -> None:
        """BuildKit accepts a `\\` on the last line; the instruction it ends was surely meant to go on."""
        lines, escape = parsed.lines, parsed.escape
        last = next((i for i in range(len(lines), 0, -1) if lines[i - 1].strip()[:1] not in ("", "#")), 0)
        if not last or not parsed.instructions or not lines[last - 1].rstrip().endswith(escape):
            return
        final = parsed.instructions[-1]
        if final.start_line <= last <= final.end_line and not final.heredocs:  # heredocs end on their marker
            self.error(final.start_line, f"{final.cmd}: line continuation '{escape}' on the last line of the file")


def _mount_field_problem(kind: str, key: str, value: str, item: str) -> str | None:
    """What BuildKit's parseMount says about one key=value of a mount, or None."""
    if key == "type" and value.lower() not in _MOUNT_TYPES:
        return f"unsupported mount type {value!r}{_did_you_mean(value.lower(), list(_MOUNT_TYPES))}"
    if key in _READ and value not in _BOOL:
        return f"invalid value for {key}: {value}"
    if key == "required" and kind not in ("secret", "ssh"):
        return f"unexpected key 'required' for mount type '{kind}'"
    if key == "required" and value not in _BOOL:
        return f"invalid value for required: {value}"
    if key == "size" and kind != "tmpfs":
        return f"unexpected key 'size' for mount type '{kind}'"
    if key == "size" and not re.fullmatch(r"[0-9.]+ ?(?:[kmgtp](?:i?b)?|b)?", value, re.IGNORECASE):
        return f"invalid value for size: {value}"
    if key == "sharing" and value.lower() not in ("shared", "private", "locked"):
        return f"unsupported sharing value {value!r} (use shared, private or locked)"
    if key in ("mode", "uid", "gid") and _uint(value, 8 if key == "mode" else 10) is None:
        return f"invalid value {value} for {key}"
    if key not in _MOUNT_KEYS:
        return f"unexpected key '{key}' in '{item}'{_did_you_mean(key, list(_MOUNT_KEYS))}"
    return None


def _mount_problems(kind: str, values: Mapping[str, str]) -> list[str]:
    """BuildKit's checks on a whole mount."""
    found = []
    if kind in ("bind", "tmpfs"):
        found += [f"{key} not allowed for {kind!r} type mounts" for key in ("mode", "uid", "gid") if key in values]
    if kind == "secret":
        if values.get("from"):
            found.append("secret mount should not have a from")
        if values.get("sharing"):
            found.append("secret mount should not define sharing")
        source = values.get("source") or values.get("src")
        if not source and not any(values.get(key) for key in _TARGET) and not values.get("id"):
            found.append("invalid secret mount. one of source, target required")
        if source and values.get("id"):
            found.append("both source and id can't be set")
    if values.get("sharing") and kind != "cache":
        found.append(f"invalid cache sharing set for {kind} mount")
    if any(posixpath.normpath(values.get(key) or ".") == "/" for key in _TARGET):
        found.append('invalid mount target "/"')
    return found


def _meant_json(cmd: str, rest: str) -> bool:
    """Whether a shell-form value was surely meant as a JSON array: BuildKit runs it in a shell instead."""
    rest = rest.strip()
    if not rest.startswith("["):
        return False
    if cmd in ("COPY", "ADD", "VOLUME"):
        return rest.endswith("]")  # `COPY [Mm]akefile /src/` is a glob; a whole value in brackets is an array
    # `[ -f x ]` and `[[ -f x ]]` are shell tests; a quote right after `[`, or quoted items with commas, are JSON.
    return rest[1:2] in ('"', "'", "]") or (rest.endswith("]") and re.search(r"[\"']\s*,", rest) is not None)


def _is_signal(value: str) -> bool:
    """moby's signal.ParseSignal: a non-zero number, or a Linux signal name with or without SIG."""
    if re.fullmatch(r"[+-]?[0-9]+", value):
        return int(value) != 0
    return value.upper().removeprefix("SIG") in _SIGNALS


def _port_problem(port: str) -> str | None:
    """BuildKit's EXPOSE check: [[ip:]hostport:]port[-port][/tcp|udp|sctp]."""
    spec, _, proto = port.rpartition(":")[2].partition("/")
    if not spec:
        return "no port specified"
    if proto.lower() not in ("", "tcp", "udp", "sctp"):
        return f"invalid proto {proto!r}"
    start, dash, end = spec.partition("-")
    for number in (start, end) if dash else (start,):
        if not number.isdigit() or int(number) > 65535:
            return "a port is a number from 0 to 65535, or a range such as 8000-8100"
    if dash and int(end) < int(start):
        return "the range ends before it starts"
    return None
