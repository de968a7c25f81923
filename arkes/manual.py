"""The manual pages and shell completions of `os`, generated from the parser the tool itself uses, so that they
never say other than what it does: os(8) and os-VERB(8) for each verb, a bash completion and a zsh one.

    python3 -m arkes.manual PREFIX     writes PREFIX/share/man/man8/os*.8, PREFIX/share/bash-completion/completions/
                                       {os,arkes} and PREFIX/share/zsh/vendor-completions/_os (the base image: /usr)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from arkes import __version__, cli

# Options and arguments whose value is a file or a directory, by their metavar; the rest take words.
FILE_METAVARS = frozenset({"FILE", "PATH", "ISO", "KEY", "PREFIX", "OUTPUT", "CMD_FILE"})
DIR_METAVARS = frozenset({"DIR"})
FILES = (
    ("/etc/system/Systemfile", "the system's declaration, and its build context beside it"),
    ("/etc/system/kargs", "the machine's own kernel arguments, one or more per line"),
    ("/etc/system/boot.conf", "boot counting and health: tries, required-units, check-timeout"),
    ("/etc/system/health.d/", "the machine's health checks (the image's are in /usr/lib/arkes/health.d/)"),
    ("/var/lib/arkes/", "the boot records, the last health check, the status cache"),
)


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            yield action


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _roff(text: str) -> str:
    """Text as roff reads it: backslashes and hyphens escaped, no line that starts with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _paragraphs(text: str) -> str:
    """argparse's description (lines broken by hand) as roff paragraphs."""
    return "\n.PP\n".join(_roff(" ".join(p.split())) for p in text.strip().split("\n\n") if p.strip())


def _option_items(parser: argparse.ArgumentParser) -> list[str]:
    items = []
    for action in _options(parser):
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            value = f" \\fI{_roff(str(action.metavar or action.dest.upper()))}\\fR" if _takes_value(action) else ""
            names = ", ".join(f"\\fB{_roff(flag)}\\fR" for flag in action.option_strings)
        else:
            value, names = "", f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        items += [".TP", names + value, _roff(str(action.help or "").replace("%(default)s", str(action.default)))]
    return items


def _header(name: str, summary: str) -> list[str]:
    return [
        f'.TH {_roff(name.upper())} 8 "" "Arkes {_roff(__version__)}" "System Administration"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
    ]


def man_pages() -> dict[str, str]:
    """Every page, by its file name: os.8 and os-VERB.8."""
    parser = cli.parser()
    verbs = _verbs(parser)
    helps = {verb.name: verb.help for verb in cli.VERBS}
    pages: dict[str, str] = {}
    top = _header("os", "build, deploy and keep an Arkes system from its Systemfile")
    top += [".SH SYNOPSIS", _roff(_usage(parser)), ".SH DESCRIPTION", _paragraphs(cli.DESCRIPTION)]
    top += [".SH COMMANDS"]
    for name in verbs:
        top += [".TP", f"\\fBos {_roff(name)}\\fR", f"{_roff(helps[name])}; see \\fBos\\-{_roff(name)}\\fR(8)."]
    top += [".SH OPTIONS", *_option_items(parser), ".SH EXIT STATUS", _paragraphs(cli.EPILOG)]
    top += [".SH FILES"]
    for path, what in FILES:
        top += [".TP", f"\\fI{_roff(path)}\\fR", _roff(what)]
    top += [".SH SEE ALSO", ",\n".join(f".BR os\\-{_roff(name)} (8)" for name in verbs)]
    pages["os.8"] = "\n".join(top) + "\n"
    for name, sub in verbs.items():
        page = _header(f"os-{name}", helps[name])
        page += [".SH SYNOPSIS", _roff(_usage(sub)), ".SH DESCRIPTION", _paragraphs(sub.description or helps[name])]
        page += [".SH OPTIONS", *_option_items(sub), ".SH SEE ALSO", ".BR os (8)"]
        pages[f"os-{name}.8"] = "\n".join(page) + "\n"
    return pages


def _value_kind(action: argparse.Action) -> str:
    """What a value of this option or argument is: dir, file, index, a choice list, or a word."""
    metavar = str(action.metavar or "")
    if action.choices:
        return "choices"
    if metavar in DIR_METAVARS:
        return "dir"
    if metavar in FILE_METAVARS or action.dest in ("path", "output"):
        return "file"
    if action.dest == "index" or (action.type is int and "index" in str(action.help or "")):
        return "index"
    return "word"


INDEXES = 'os status --json 2>/dev/null | python3 -c \'import json, sys; print(*(d["index"] for d in json.load(sys.stdin)["deployments"]))\''  # noqa: E501


def bash_completion() -> str:
    parser = cli.parser()
    verbs = _verbs(parser)
    lines = [
        "# bash completion for os(8), generated from its parser (python3 -m arkes.manual)",
        "_os_indexes() {",
        f"    {INDEXES}",
        "}",
        "",
        "_os() {",
        "    local cur prev words cword",
        "    _init_completion || return",
        "    local verb='' i",
        "    for ((i = 1; i < cword; i++)); do",
        '        case "${words[i]}" in',
        "        --sysroot) ((i++)) ;;",
        "        -*) ;;",
        '        *) verb="${words[i]}"; break ;;',
        "        esac",
        "    done",
        '    if [[ -z "$verb" ]]; then',
        '        case "$prev" in --sysroot) _filedir -d; return ;; esac',
        '        if [[ "$cur" == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{" ".join(_flags(parser))}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "{" ".join(verbs)}" -- "$cur"))',
        "        fi",
        "        return",
        "    fi",
        '    local opts="" positional="" choices=""',
        '    case "$verb" in',
    ]
    for name, sub in verbs.items():
        lines.append(f"    {name})")
        values = [a for a in _options(sub) if a.option_strings and _takes_value(a)]
        cases = []
        for action in values:
            kind = _value_kind(action)
            flags = "|".join(action.option_strings)
            if kind == "dir":
                cases.append(f"        {flags}) _filedir -d; return ;;")
            elif kind == "file":
                cases.append(f"        {flags}) _filedir; return ;;")
            elif kind == "index":
                cases.append(f'        {flags}) COMPREPLY=($(compgen -W "$(_os_indexes)" -- "$cur")); return ;;')
            elif kind == "choices":
                words = " ".join(str(c) for c in action.choices or ())
                cases.append(f'        {flags}) COMPREPLY=($(compgen -W "{words}" -- "$cur")); return ;;')
            else:
                cases.append(f"        {flags}) return ;;")
        if cases:
            lines += ['        case "$prev" in', *cases, "        esac"]
        lines.append(f'        opts="{" ".join(_flags(sub))}"')
        positionals = [a for a in _options(sub) if not a.option_strings]
        if positionals:
            lines.append(f'        positional="{_value_kind(positionals[0])}"')
            if positionals[0].choices:
                lines.append(f'        choices="{" ".join(str(c) for c in positionals[0].choices)}"')
        lines.append("        ;;")
    lines += [
        "    esac",
        '    if [[ "$cur" == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "        return",
        "    fi",
        '    case "$positional" in',
        "    file) _filedir ;;",
        "    dir) _filedir -d ;;",
        '    index) COMPREPLY=($(compgen -W "$(_os_indexes)" -- "$cur")) ;;',
        '    choices) COMPREPLY=($(compgen -W "$choices" -- "$cur")) ;;',
        "    esac",
        "}",
        "complete -F _os os arkes",
    ]
    return "\n".join(lines) + "\n"


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in _options(parser) for flag in action.option_strings]


def _zsh_text(text: str) -> str:
    return re.sub(r"[\[\]:'`$\\]", "", " ".join(str(text or "").split()))


def _zsh_spec(action: argparse.Action) -> str:
    help_text = _zsh_text(str(action.help or ""))
    kind = _value_kind(action)
    action_part = {
        "dir": "_files -/",
        "file": "_files",
        "index": "_os_indexes",
        "choices": f"({' '.join(str(c) for c in action.choices or ())})",
        "word": " ",
    }[kind]
    if not action.option_strings:
        many = "*" if action.nargs in ("*", "+", argparse.REMAINDER) else ""
        return f"'{many}:{_zsh_text(str(action.metavar or action.dest))}:{action_part}'"
    value = f":{_zsh_text(str(action.metavar or action.dest))}:{action_part}" if _takes_value(action) else ""
    repeat = "*" if isinstance(action, argparse._AppendAction) else ""
    if len(action.option_strings) == 1:
        return f"'{repeat}{action.option_strings[0]}[{help_text}]{value}'"
    names = ",".join(action.option_strings)
    return f"'({' '.join(action.option_strings)})'{{{names}}}'[{help_text}]{value}'"


def zsh_completion() -> str:
    parser = cli.parser()
    verbs = _verbs(parser)
    helps = {verb.name: verb.help for verb in cli.VERBS}
    lines = [
        "#compdef os arkes",
        "# zsh completion for os(8), generated from its parser (python3 -m arkes.manual)",
        "",
        "_os_indexes() {",
        "    local -a indexes",
        f'    indexes=(${{(z)"$({INDEXES})"}})',
        "    _describe -t indexes 'deployment index' indexes",
        "}",
        "",
        "_os() {",
        "    local curcontext=$curcontext state line",
        "    _arguments -C \\",
    ]
    lines += [f"        {_zsh_spec(a)} \\" for a in _options(parser) if a.option_strings]
    lines += [
        "        '1:verb:->verb' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "    verb)",
        "        local -a verbs",
        "        verbs=(",
        *[f"            '{name}:{_zsh_text(helps[name])}'" for name in verbs],
        "        )",
        "        _describe -t verbs 'os verb' verbs",
        "        ;;",
        "    argument)",
        "        case $line[1] in",
    ]
    for name, sub in verbs.items():
        specs = [_zsh_spec(a) for a in _options(sub)]
        lines.append(f"        {name}) _arguments {' '.join(specs)} ;;")
    lines += ["        esac", "        ;;", "    esac", "}", "", '_os "$@"']
    return "\n".join(lines) + "\n"


def write(prefix: Path) -> list[Path]:
    """Write the pages and the completions under `prefix` (/usr in the image); return what was written."""
    written = []
    man8 = prefix / "share/man/man8"
    man8.mkdir(parents=True, exist_ok=True)
    for name, text in man_pages().items():
        (man8 / name).write_text(text)
        written.append(man8 / name)
    bash = prefix / "share/bash-completion/completions"
    bash.mkdir(parents=True, exist_ok=True)
    for name in ("os", "arkes"):
        (bash / name).write_text(bash_completion())
        written.append(bash / name)
    zsh = prefix / "share/zsh/vendor-completions"
    zsh.mkdir(parents=True, exist_ok=True)
    (zsh / "_os").write_text(zsh_completion())
    written.append(zsh / "_os")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m arkes.manual PREFIX")
    sys.stdout.write("".join(f"{path}\n" for path in write(Path(sys.argv[1]))))
