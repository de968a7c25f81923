"""The Containerfile grammar, as BuildKit's current parser (moby/buildkit frontend/dockerfile/parser) reads it.

This module turns text into instructions and knows nothing of what they mean: parser directives, line
continuations and the escape token, comments, heredocs, flags, JSON versus shell form, and the shell-like word
lexer BuildKit uses for heredoc words and variable expansion. Where BuildKit stops at the first error, `parse`
records it with its line and carries on with the next instruction, so every problem can be reported at once.

Our builder is Buildah 1.39, whose parser is imagebuilder v1.2.15's older copy of the Docker parser with BuildKit
v0.19's heredoc code. Where that parser reads the same text differently, `parse` records a divergence, so that
`os check` can refuse what the two would build differently.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

INSTRUCTIONS = frozenset(
    {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER"}
    | {"WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
)
DIRECTIVES = frozenset({"syntax", "escape", "check"})
# BuildKit reads lines with a bufio.Scanner of 64 KiB: a longer line (its newline included) stops the parse.
MAX_LINE_BYTES = 65535
BUILDER = "the builder (Buildah 1.39)"

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")  # Go's reWhitespace: no newline, no Unicode spaces
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
# Where parsing resumes after an unterminated heredoc: the next line that looks like an instruction. Upper case
# only, because heredoc bodies are shell scripts and `env`, `user` or `add` start many of their lines.
_INSTRUCTION_LINE = re.compile(r"^\s*(?:{})(?:\s|$)".format("|".join(sorted(INSTRUCTIONS))))


def is_space(char: str) -> bool:
    """Go's unicode.IsSpace; Python's isspace also counts the ASCII separators 0x1c to 0x1f."""
    return char.isspace() and char not in "\x1c\x1d\x1e\x1f"


def lstrip(text: str) -> str:
    return text[next((i for i, char in enumerate(text) if not is_space(char)), len(text)) :]


def strip(text: str) -> str:
    return lstrip(text[: next((i for i in range(len(text), 0, -1) if not is_space(text[i - 1])), 0)])


@dataclass(frozen=True)
class Heredoc:
    """A here-document: `content` is its body as written, each line with its newline, the terminator left out."""

    name: str
    content: str
    expand: bool  # false when the delimiter is quoted: the builder does not substitute variables in it
    chomp: bool  # <<- : leading tabs are stripped from the body (and the terminator)
    fd: int  # 3<<EOF feeds descriptor 3; 0 when no number is given

    @property
    def text(self) -> str:
        """The body as the build uses it."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass(frozen=True)
class Instruction:
    """One instruction as the parser saw it; for ONBUILD, `value` starts with the trigger instruction.

    `value` holds the arguments as BuildKit's parser splits them (ENV and LABEL as name, value pairs; RUN, CMD and
    ENTRYPOINT in shell form as one string, the heredoc openers included); `original` is the instruction's logical
    line, followed by the body and terminator of each heredoc.
    """

    cmd: str
    value: tuple[str, ...]
    json: bool
    flags: tuple[str, ...]
    start_line: int
    end_line: int
    original: str
    heredocs: tuple[Heredoc, ...] = ()
    trigger: Instruction | None = None  # the instruction an ONBUILD holds


@dataclass(frozen=True)
class Directive:
    name: str  # lower case
    value: str
    line: int


@dataclass(frozen=True)
class Parsed:
    instructions: tuple[Instruction, ...]
    directives: tuple[Directive, ...]
    escape: str
    errors: tuple[tuple[int, str], ...]  # (line, message): what BuildKit refuses
    warnings: tuple[tuple[int, str], ...]  # what BuildKit warns about
    divergences: tuple[tuple[int, str], ...]  # what Buildah 1.39 reads differently from BuildKit
    lines: tuple[str, ...]  # the physical lines, newlines stripped


class ShellError(ValueError):
    """What BuildKit's shell lexer refuses: an unterminated quote, a bad ${...}, an unset ${VAR:?message}."""


class _Words:
    """BuildKit's wordsStruct: words split at unquoted whitespace, quoted parts kept whole."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, char: str) -> None:
        if is_space(char) and self.in_word:
            if self.buf:
                self.words.append("".join(self.buf))
                self.buf, self.in_word = [], False
        elif not is_space(char):
            self.add_raw(char)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def get(self) -> list[str]:
        if "".join(self.buf):
            self.words.append("".join(self.buf))
            self.buf, self.in_word = [], False
        return self.words


class Lexer:
    """BuildKit's shell.Lex: quote removal, escapes, word splitting and ${VAR...} substitution.

    `env` maps names to values, None for a declared variable without one. With `complete`, a name missing from
    `env` is unset; otherwise it is unknown (the image may set it), and is left as written, as BuildKit's
    SkipUnsetEnv does, with `uncertain` set. `plain_modifiers` collects ${VAR-x}, ${VAR+x} and ${VAR?x}, which
    Buildah's own substitution code refuses.
    """

    def __init__(
        self,
        escape: str = "\\",
        env: Mapping[str, str | None] | None = None,
        *,
        complete: bool = True,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset: bool = False,
        skip_quotes: bool = False,
    ) -> None:
        self.escape, self.env, self.complete = escape, env or {}, complete
        self.raw_quotes, self.raw_escapes, self.skip_unset = raw_quotes, raw_escapes, skip_unset
        self.skip_quotes = skip_quotes
        self.text, self.pos, self.uncertain = "", 0, False
        self.unset: list[str] = []  # names used as $NAME or ${NAME} while unset
        self.plain_modifiers: set[str] = set()

    def word(self, text: str) -> str:
        return self._run(text)[0]

    def words(self, text: str) -> list[str]:
        return self._run(text)[1]

    def _run(self, text: str) -> tuple[str, list[str]]:
        self.text, self.pos = text, 0
        return self._stop_on("", self.raw_escapes)

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _next(self) -> str:
        char = self._peek()
        self.pos += 1 if char else 0
        return char

    def _stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            result: list[str] = []
            words = _Words()
            while char := self._peek():
                if stop and char == stop:
                    self._next()
                    return "".join(result), words.get()
                if char == "$":
                    part = self._dollar()
                    result.append(part)
                    for each in part:
                        words.add_char(each)
                elif char == "<":
                    part = self._possible_heredoc()
                    result.append(part)
                    words.add_raw(part)
                elif char in "'\"" and not self.skip_quotes:
                    part = self._single_quote() if char == "'" else self._double_quote()
                    result.append(part)
                    words.add_raw(part)
                else:
                    char = self._next()
                    if char == self.escape:
                        if self.raw_escapes:
                            words.add_raw(char)
                            result.append(char)
                        char = self._next()
                        if not char:
                            break
                        words.add_raw(char)
                    else:
                        words.add_char(char)
                    result.append(char)
            if stop:
                raise ShellError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get()
        finally:
            self.raw_escapes = saved

    def _until(self, stop: str, raw_escapes: bool, missing: str) -> str:
        """The text up to `stop`; at the end of the text, BuildKit says what is missing instead."""
        try:
            return self._stop_on(stop, raw_escapes)[0]
        except ShellError:
            if not self._peek():
                raise ShellError(missing) from None
            raise

    def _single_quote(self) -> str:
        opening = self._next()
        out = [opening] if self.raw_quotes else []
        while True:
            char = self._next()
            if not char:
                raise ShellError("unexpected end of statement while looking for matching single-quote")
            if char == "'":
                return "".join([*out, char] if self.raw_quotes else out)
            out.append(char)

    def _double_quote(self) -> str:
        opening = self._next()
        out = [opening] if self.raw_quotes else []
        while True:
            char = self._peek()
            if not char:
                raise ShellError("unexpected end of statement while looking for matching double-quote")
            if char == '"':
                self._next()
                return "".join([*out, char] if self.raw_quotes else out)
            if char == "$":
                out.append(self._dollar())
                continue
            char = self._next()
            if char == self.escape:
                if self.raw_escapes:
                    out.append(char)
                following = self._peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    char = self._next()
            out.append(char)

    def _possible_heredoc(self) -> str:
        self._next()
        if self._peek() != "<":
            return "<"
        self._next()
        spaces = ""
        while self._peek() and self._peek() in "\t\r ":
            spaces += self._next()
        return "<<" + spaces

    def _name(self) -> str:
        name = ""
        while char := self._peek():
            if not name and char.isdecimal():
                while self._peek().isdecimal():
                    name += self._next()
                return name
            if not name and char in "@*#?-$!0":
                return self._next()
            if not (char.isalpha() or char.isdecimal() or char == "_"):
                break
            name += self._next()
        return name

    def _get(self, name: str) -> tuple[str, bool, bool]:
        """(value, is set, is unknown)."""
        if name in self.env:
            value = self.env[name]
            return (value, True, False) if value is not None else ("", False, False)
        if not self.complete:
            self.uncertain = True
            return "", False, True
        return "", False, False

    def _plain(self, name: str, written: str, value: str, found: bool, unknown: bool) -> str:
        if not found and (self.skip_unset or unknown):
            return written
        if not found:
            self.unset.append(name)
        return value

    def _dollar(self) -> str:
        self._next()
        if self._peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value, found, unknown = self._get(name)
            return self._plain(name, "$" + name, value, found, unknown)
        self._next()
        if not self._peek():
            raise ShellError("syntax error: missing '}'")
        if self._peek() in "{}:":
            raise ShellError("syntax error: bad substitution")
        name = self._name()
        modifier = self._next()
        if not modifier:
            raise ShellError("syntax error: missing '}'")
        if modifier == "}":
            value, found, unknown = self._get(name)
            return self._plain(name, f"${{{name}}}", value, found, unknown)
        if modifier == "/":
            return self._replace(name)
        null_is_unset = modifier == ":"
        operator = self._next() if null_is_unset else modifier
        if not null_is_unset and operator not in "+-?#%":
            raise ShellError(f"unsupported modifier ({modifier}) in substitution")
        if null_is_unset and operator in ("#", "%"):
            raise ShellError(f"unsupported modifier (:{operator}) in substitution")
        word = self._until("}", operator in ("#", "%"), "syntax error: missing '}'")
        if operator in "+-?" and not null_is_unset:
            self.plain_modifiers.add(f"${{{name}{operator}...}}")
        value, found, unknown = self._get(name)
        if not found and (self.skip_unset or unknown):
            return f"${{{name}{':' if null_is_unset else ''}{operator}{word}}}"
        empty = not found or (null_is_unset and value == "")
        if operator == "-":
            return word if empty else value
        if operator == "+":
            return "" if empty else word
        if operator == "?":
            if not found:
                raise ShellError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ShellError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if operator in ("#", "%"):
            greedy = word[:1] == operator
            pattern = word[1:] if greedy else word
            if operator == "#":
                return _trim_prefix(pattern, value, greedy)
            return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]
        raise ShellError(f"unsupported modifier ({':' if null_is_unset else ''}{operator}) in substitution")

    def _replace(self, name: str) -> str:
        replace_all = self._peek() == "/"
        if replace_all:
            self._next()
        pattern = self._until("/", True, "syntax error: missing '/' in ${}")
        replacement = self._until("}", True, "syntax error: missing '}'")
        value, found, unknown = self._get(name)
        if not found and (self.skip_unset or unknown):
            return f"${{{name}/{pattern}/{replacement}}}"
        regex = _shell_pattern(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _: replacement, value, count=0 if replace_all else 1)


def _shell_pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A ${VAR#pattern} wildcard (`?`, `*`, no brackets) as a regular expression, as BuildKit converts it."""
    out = ["^"] if anchored else []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            out.append(".*" if greedy else ".*?")
        elif char == "?":
            out.append(".")
        elif char == "\\":
            if pattern[index : index + 1] in ("}", "/"):
                continue
            following = pattern[index : index + 1]
            index += 1
            if following not in ("*", "?", "\\"):
                raise ShellError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'")
            out.append("\\" + following)
        else:
            out.append(re.escape(char))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _shell_pattern(pattern, greedy=greedy, anchored=True).match(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each escape in front of what it escapes, so suffixes can be trimmed as prefixes."""
    tokens: list[str] = []
    index = 0
    while index < len(pattern):
        step = 2 if pattern[index] == "\\" and index + 1 < len(pattern) else 1
        tokens.append(pattern[index : index + step])
        index += step
    return "".join(reversed(tokens))


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a word such as `<<EOF`, `<<-'EOF'` or `3<<EOF` opens, without its body; None if it opens none."""
    match = _HEREDOC.match(word)
    if not match or not match[3]:
        return None
    words = Lexer(skip_unset=True).words(match[3])
    if len(words) != 1:
        return None
    raw = Lexer(raw_quotes=True, skip_unset=True).words(match[3])
    if len(raw) != len(words):
        raise ShellError(f"internal lexing of heredoc produced inconsistent results: {match[3]}")
    quotes = words[0].count("'") + words[0].count('"')
    expand = quotes == raw[0].count("'") + raw[0].count('"')
    return Heredoc(words[0], "", expand, match[2] == "-", int(match[1] or 0))


def heredoc_words(line: str) -> list[str]:
    """The line split into words as BuildKit does to look for heredocs: quotes and escapes kept, no expansion."""
    try:
        return Lexer(raw_quotes=True, raw_escapes=True, skip_unset=True).words(line)
    except ShellError:
        return []  # BuildKit ignores the error: a line with an unmatched quote opens no heredoc


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords for ENV, LABEL and ARG: split at whitespace outside quotes, quotes kept."""
    words: list[str] = []
    word: list[str] = []
    phase, quote, blank_ok = "spaces", "", False
    pos = 0
    while True:
        char = rest[pos] if pos < len(rest) else ""
        if phase == "spaces":
            if not char:
                break
            if is_space(char):
                pos += 1
                continue
            phase = "word"
        if not char:
            if blank_ok or word:
                words.append("".join(word))
            break
        pos += 1
        if phase == "word":
            if is_space(char):
                if blank_ok or word:
                    words.append("".join(word))
                phase, word, blank_ok = "spaces", [], False
                continue
            if char in "'\"":
                phase, quote, blank_ok = "quote", char, True
            if char == escape:
                if pos == len(rest):
                    continue  # an escape at the very end is dropped
                word.append(char)
                char = rest[pos]
                pos += 1
            word.append(char)
            continue
        if char == quote:
            phase = "word"
        if char == escape and quote != "'":
            if pos == len(rest):
                phase = "word"
                continue
            word.append(char)
            char = rest[pos]
            pos += 1
        word.append(char)
    return words


def extract_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Split leading `--name[=value]` words (quotes removed, escapes applied) off a line: (the rest, the flags)."""
    words: list[str] = []
    word: list[str] = []
    state, quote, blank_ok = "spaces", "", False
    index = 0
    while index <= len(line):
        char = line[index] if index < len(line) else ""
        if state == "spaces":
            if not char:
                break
            if is_space(char):
                index += 1
                continue
            if not line.startswith("--", index):
                return line[index:], words
            state = "word"
        if not char:
            if "".join(word) != "--" and (blank_ok or word):
                words.append("".join(word))
            break
        index += 1
        if state == "word":
            if is_space(char):
                state = "spaces"
                if "".join(word) == "--":
                    return line[index - 1 :], words
                if blank_ok or word:
                    words.append("".join(word))
                word, blank_ok = [], False
                continue
            if char in "'\"":
                quote, blank_ok, state = char, True, "quote"
                continue
        elif char == quote:
            state = "word"
            continue
        if char == escape:
            if index == len(line):
                state = "word"
                continue
            char = line[index]
            index += 1
        word.append(char)
    return "", words


def json_array(rest: str) -> tuple[list[str] | None, str | None]:
    """(the strings of a JSON array, None) or (None, why it is not one); "" when it is an array of non-strings."""
    rest = lstrip(rest)
    if not rest.startswith("["):
        return None, "not a JSON array"

    def refuse(constant: str) -> object:
        raise ValueError(constant)  # Go's encoding/json has no NaN or Infinity

    try:
        parsed = json.loads(rest, parse_constant=refuse)
    except ValueError as exc:
        if re.search(r",\s*\]", rest):  # Python 3.11 says "expecting value" here, 3.13 names the comma
            return None, "a trailing comma"
        return None, exc.msg.lower() if isinstance(exc, json.JSONDecodeError) else str(exc)
    if not isinstance(parsed, list):
        return None, "not a JSON array"
    if not all(isinstance(item, str) for item in parsed):
        return None, ""
    return parsed, None


class _Parser:
    def __init__(self, text: str) -> None:
        pieces = text.split("\n")
        self.raw = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        if self.raw:
            self.raw[0] = self.raw[0].removeprefix("\ufeff")
        self.lines = tuple(line.rstrip("\r\n") for line in self.raw)
        self.errors: list[tuple[int, str]] = []
        # BuildKit's scanner stops at the first line over its limit: whatever comes after is never read.
        too_long = next((i for i, line in enumerate(self.lines) if len(line.encode()) > MAX_LINE_BYTES), None)
        if too_long is not None:
            self.errors.append((too_long + 1, f"line longer than {MAX_LINE_BYTES} bytes: BuildKit stops reading here"))
            self.raw = self.raw[:too_long]
        self.escape = "\\"
        self.continuation = self._continuation_regex("\\")
        self.directives: list[Directive] = []
        self.directives_done = False
        self.warnings: list[tuple[int, str]] = []
        self.divergences: list[tuple[int, str]] = []
        self.instructions: list[Instruction] = []
        self.pos = 0  # index of the next physical line; also the number of the last line read

    @staticmethod
    def _continuation_regex(escape: str) -> re.Pattern[str]:
        token = re.escape(escape)
        return re.compile(rf"([^{token}]){token}[ \t]*\Z|^{token}[ \t]*\Z")

    def run(self) -> Parsed:
        while self.pos < len(self.raw):
            self._logical_line()
        return Parsed(
            tuple(self.instructions),
            tuple(self.directives),
            self.escape,
            tuple(self.errors),
            tuple(self.warnings),
            tuple(self.divergences),
            self.lines,
        )

    def _directive(self, token: str, number: int) -> None:
        if self.directives_done:
            return
        match = _DIRECTIVE.match(lstrip(token[1:])) if token.startswith("#") else None
        if not match or match[1].lower() not in DIRECTIVES:
            self.directives_done = True
            return
        name, value = match[1].lower(), match[2]
        if any(d.name == name for d in self.directives):
            self.errors.append((number, f"only one {name} parser directive can be used"))
            return
        self.directives.append(Directive(name, value, number))
        if name != "escape":
            return
        if value not in ("\\", "`"):
            self.errors.append((number, f"invalid escape token '{value}' does not match ` or \\"))
            return
        # The builder honours `# escape=` only on the first line; arkes.builderfile moves it there.
        self.escape, self.continuation = value, self._continuation_regex(value)

    def _trim(self, token: str, number: int) -> tuple[str, bool]:
        """Remove a line continuation; (the line, whether the instruction ends here)."""
        if self.continuation.search(token):
            return self.continuation.sub(r"\1", token, count=1), False
        if re.search(rf"{re.escape(self.escape)}[ \t]*\Z", token):
            why = f"BuildKit ends the instruction here, {BUILDER} continues it on the next line"
            self.divergences.append((number, f"the line ends with an escaped '{self.escape}': {why}"))
        return token, True

    def _logical_line(self) -> None:
        first = self.lines[self.pos]
        self.pos += 1
        start = self.pos
        token = lstrip(first)
        self._directive(token, start)
        if token.startswith("#"):
            return
        token, end = self._trim(token, start)
        if end and not token:
            return
        parts = [token]
        empty_continuation = 0
        while not end and self.pos < len(self.raw):
            line = self.lines[self.pos]
            self.pos += 1
            if lstrip(line).startswith("#"):
                continue
            if not lstrip(line):
                empty_continuation = empty_continuation or self.pos
                continue
            token, end = self._trim(line, self.pos)
            parts.append(token)
        line = "".join(parts)
        try:
            instruction = self._node(line, start)
        except ValueError as exc:
            self.errors.append((start, self._describe(line, str(exc))))
            return
        if empty_continuation:
            why = "BuildKit warns that a future release will refuse it"
            self.warnings.append((empty_continuation, f"{instruction.cmd}: empty continuation line ({why})"))
        try:
            heredocs = self._heredocs(instruction, line, start)
        except ValueError as exc:
            self.errors.append((start, self._describe(line, str(exc))))
            return
        if heredocs is None:
            return
        original = line + "".join(f"\n{doc.content}{doc.name}" for doc in heredocs)
        trigger = instruction.trigger
        if trigger is not None:
            trigger = dataclasses.replace(trigger, heredocs=tuple(heredocs), end_line=self.pos)
        self.instructions.append(
            dataclasses.replace(
                instruction, end_line=self.pos, original=original, heredocs=tuple(heredocs), trigger=trigger
            )
        )

    def _describe(self, line: str, message: str) -> str:
        keyword = (_WHITESPACE.split(strip(line), maxsplit=1) or [""])[0].upper()
        return message if not keyword or message.startswith(keyword) else f"{keyword}: {message}"

    def _heredocs(self, instruction: Instruction, line: str, start: int) -> list[Heredoc] | None:
        """Read the bodies of the heredocs the line opens; None when one is unterminated."""
        target = instruction.trigger or instruction
        if target.cmd not in ("RUN", "COPY", "ADD") or target.json or "<<" not in line:
            return []
        words = heredoc_words(line)
        opened = [doc for doc in map(parse_heredoc, words) if doc]
        for before, after in zip(words, [*words[1:], ""], strict=True):
            if before == "<<-" and after:
                why = "it is not a heredoc, and the lines after it are read as instructions"
                self.errors.append((start, f"{target.cmd}: no space is allowed after '<<-' ('<<- {after}'): {why}"))
        docs: list[Heredoc] = []
        opener_end = self.pos
        for doc in opened:
            body: list[str] = []
            while self.pos < len(self.raw):
                raw = self.raw[self.pos]
                self.pos += 1
                candidate = raw.rstrip("\r\n")
                if (candidate.lstrip("\t") if doc.chomp else candidate) == doc.name:
                    break
                body.append(raw)
            else:
                why = f"{target.cmd} opens <<{doc.name} but no line '{doc.name}' closes it"
                self.errors.append((start, f"unterminated heredoc: {why}"))
                self.pos = next(
                    (i for i in range(opener_end, len(self.raw)) if _INSTRUCTION_LINE.match(self.lines[i])),
                    len(self.raw),
                )
                return None
            docs.append(Heredoc(doc.name, "".join(body), doc.expand, doc.chomp, doc.fd))
        return docs

    def _node(self, line: str, start: int) -> Instruction:
        """One instruction from its logical line (heredoc bodies not read yet); ValueError for BuildKit's refusals."""
        parts = _WHITESPACE.split(strip(line), maxsplit=1)
        keyword, rest, flags = parts[0], "", list[str]()
        if len(parts) == 2:
            rest, flags = extract_flags(parts[1], self.escape)
            if self.escape != "\\" and extract_flags(parts[1], "\\")[1] != flags:
                why = f"{BUILDER} always escapes flags with '\\', not with the escape directive's '{self.escape}'"
                self.divergences.append((start, f"{keyword.upper()}: {why}"))
            rest = strip(rest)
        cmd = keyword.upper()
        value: tuple[str, ...] = ()
        is_json = False
        trigger = None
        if cmd in ("ENV", "LABEL"):
            value = _name_values(rest, cmd, self.escape)
        elif cmd == "ARG":
            value = tuple(parse_words(rest, self.escape))
        elif cmd in ("FROM", "EXPOSE"):
            value = tuple(_WHITESPACE.split(rest)) if rest else ()
        elif cmd in ("MAINTAINER", "STOPSIGNAL", "USER", "WORKDIR"):
            value = (rest,) if rest else ()
        elif cmd in ("RUN", "CMD", "ENTRYPOINT", "SHELL", "ADD", "COPY", "VOLUME"):
            value, is_json = self._maybe_json(cmd, rest, start)
        elif cmd == "HEALTHCHECK":
            kind = next((i for i, char in enumerate(rest) if is_space(char)), len(rest))
            if kind:
                command, is_json = self._maybe_json(cmd, lstrip(rest[kind:]), start)
                value = (rest[:kind], *command)
        elif cmd == "ONBUILD" and rest:
            trigger = self._node(rest, start)
            value, is_json = (trigger.cmd, *trigger.value), trigger.json
        return Instruction(cmd, value, is_json, tuple(flags), start, start, line, (), trigger)

    def _maybe_json(self, cmd: str, rest: str, start: int) -> tuple[tuple[str, ...], bool]:
        """A JSON array of strings, else the shell form: one string, or whitespace-split words for ADD and COPY."""
        items, why = json_array(rest)
        if items is not None:
            return tuple(items), True
        if why == "":
            raise ValueError("when using JSON array syntax, arrays must be comprised of strings only")
        try:
            head, end = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            head, end = None, 0
        if isinstance(head, list) and strip(rest[end:]):
            why = f"BuildKit runs all of it as a shell command, {BUILDER} only the array"
            self.divergences.append((start, f"{cmd}: text after the JSON array {rest[:end]}: {why}"))
        if cmd in ("ADD", "COPY", "VOLUME"):
            return (tuple(_WHITESPACE.split(rest)) if rest else ()), False
        return ((rest,) if rest else ()), False


def _name_values(rest: str, cmd: str, escape: str) -> tuple[str, ...]:
    """ENV and LABEL: name=value pairs, or the old `NAME value` form; (name, value, name, value, ...)."""
    words = parse_words(rest, escape)
    if not words:
        return ()
    if "=" not in words[0]:
        parts = _WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ValueError(f"{cmd} must have two arguments")
        return parts[0], parts[1]
    pairs: list[str] = []
    for word in words:
        if "=" not in word:
            raise ValueError(f"Syntax error - can't find = in {json.dumps(word)}. Must be of the form: name=value")
        pairs.extend(word.split("=", 1))
    return tuple(pairs)


def parse(text: str) -> Parsed:
    """Every instruction, directive, error, warning and divergence from Buildah in a Containerfile's text."""
    return _Parser(text).run()
